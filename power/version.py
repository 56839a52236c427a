"""The version power reports (`power --version`, /api/version, the User-Agent of its clients)."""

__version__ = "0.1.0"
