"""tocsin: the on-site health monitor that opens one ticket per real outage."""

__version__ = "0.1.0"
