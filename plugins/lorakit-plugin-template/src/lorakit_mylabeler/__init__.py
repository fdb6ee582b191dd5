"""A lorakit labeler plugin (made from lorakit's plugin template)."""

__version__ = "0.1.0"
