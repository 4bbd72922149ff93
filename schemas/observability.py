"""The manifest's `server.tracing` section: OpenTelemetry traces, off unless asked for."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class TracingSettings(BaseModel):
    """One span per request, exported over OTLP/HTTP (gateway/observability/tracing.py).

    Off unless `enabled: true`, an `endpoint` here, or the standard OpenTelemetry environment
    (OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, OTEL_SERVICE_NAME) is set;
    `enabled: false` keeps it off whatever the environment says."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool | None = Field(None, description="null: on when an endpoint or the OTEL_* environment is set")
    endpoint: str | None = Field(None, pattern=r"^https?://[^\s]+$",
                                 description="OTLP/HTTP base URL (e.g. http://collector:4318); /v1/traces is "
                                             "appended. Default: the OTEL_EXPORTER_OTLP_* environment")
    service_name: str | None = Field(None, min_length=1, description="default: OTEL_SERVICE_NAME, else nexa-gateway")
    headers: dict[str, str] = Field(default_factory=dict, description="sent to the collector (e.g. authorization); "
                                                                       "never written into spans")
    sample_ratio: float = Field(1.0, ge=0.0, le=1.0, description="share of new traces kept; a caller's sampled "
                                                                  "traceparent is always followed")
    capture_content: bool = Field(False, description="put prompt and completion text into spans (off: token "
                                                     "counts and timings only)")
    timeout_s: float = Field(10.0, gt=0, description="per export to the collector")
