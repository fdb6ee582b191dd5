"""Entry point of lorakit-sd: registrations only; nothing heavy is imported here."""

from __future__ import annotations

LORAKIT_PLUGIN_API = 1
