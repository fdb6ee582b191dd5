"""Commented config templates: the core's and each backend's (``lorakit config init``)."""

from __future__ import annotations

from importlib import resources

from lorakit.errors import UsageError


def template_text(backend: str | None = None, template: str | None = None) -> str:
    """The text ``lorakit config init [--backend B] [--template T]`` writes."""
    from lorakit.plugins import get_registries

    if backend is None:
        return (
            resources.files("lorakit").joinpath("templates/base.yaml").read_text(encoding="utf-8")
        )
    registries = get_registries()
    entry = registries.backend_for(None, backend)
    templates = entry.spec.template_files()
    if not templates:
        raise UsageError(f"backend {backend} ships no config template")
    name = template or next(iter(templates))
    if name not in templates:
        raise UsageError(
            f"backend {backend} has no template '{name}' (has: {', '.join(templates)})"
        )
    package, file = templates[name]
    return resources.files(package).joinpath(file).read_text(encoding="utf-8")
