"""RELOAD (RFC 6940) overlays — arrive with issues 4 and 5."""
