"""The typed layout of `eval/metrics.json`, kept importable here for the evaluation stages and the report; it is
defined in `ehrxdiff_core/artifacts/metrics.py`."""

from ehrxdiff_core.artifacts.metrics import MetricsFile, read_metrics

__all__ = ["MetricsFile", "read_metrics"]
