"""The version of aevb (one place; the package metadata, config.json and reports read it)."""
__version__ = "0.1.0"
