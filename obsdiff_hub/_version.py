"""The package version, in one place (imported by the package, the engine and the Hub code)."""

__version__ = "0.2.0"
