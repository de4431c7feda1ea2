"""The lorakit version (one place; the package metadata and ``lorakit --version`` read it)."""

__version__ = "0.1.0"
