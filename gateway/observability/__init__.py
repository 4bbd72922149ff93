"""Metrics, logs, redaction and traces: what the gateway tells its operators."""
