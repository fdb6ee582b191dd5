"""Entry point of lorakit-example-labeler."""

from __future__ import annotations

LORAKIT_PLUGIN_API = 1
