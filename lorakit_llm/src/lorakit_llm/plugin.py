"""Entry point of lorakit-llm: registrations only; nothing heavy is imported here."""

from __future__ import annotations

LORAKIT_PLUGIN_API = 1
