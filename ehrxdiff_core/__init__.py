"""ehrxdiff: predict the next chest X-ray from the previous one and the EHR events in between."""

__version__ = "0.1.0"
