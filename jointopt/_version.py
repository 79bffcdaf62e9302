"""The installed jointopt version (recorded in policy files and banks)."""

__version__ = "0.1.0"
