"""schedulerd: a fair-share GPU scheduler for teams that share a GPU cluster."""

__version__ = "0.1.0"
