"""The one exception type for bad input data, so callers can tell bad data from bugs."""


class DataError(ValueError):
    """Bad or missing input data; the message names the table, file, column or config key."""
