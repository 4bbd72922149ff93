"""Model files the tests write themselves (synthetic weights, or conversions of real ones)."""
