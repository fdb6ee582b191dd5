"""How a backend tells ``lorakit inspect`` what a file or folder is.

A backend implements ``BackendPlugin.identify``: a method that receives a :class:`FileProbe`
(the path, and for a safetensors file the tensor names and metadata its header holds; the
core has read and checked the header) and returns a :class:`FileKind` when the file is one
of its own, else None. ``inspect`` asks every installed backend and uses the first answer:

- ``format`` names what the file is (``kohya / A1111 LoRA``);
- ``groups`` maps tensor-name prefixes to the part of the model they adapt (``lora_unet_`` →
  ``unet``), and ``kohya_names`` says the module names are kohya's flattened paths;
- ``inspect`` points to what to read instead (a run folder's ``adapter/``);
- ``summary`` is the backend's own reading of a file that is not safetensors (a GGUF LoRA
  adapter), in the terms ``inspect`` prints.

Nothing here imports torch; an ``identify`` must stay as cheap (a header, a listing).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class FileProbe:
    """What ``inspect`` knows of a path before a backend identifies it."""

    path: Path
    #: A safetensors file's tensor names (None: a folder, or a file that is not safetensors).
    tensor_names: tuple[str, ...] | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass
class LoraSummary:
    """A LoRA file read by its backend: the facts ``inspect`` prints."""

    size_bytes: int
    modules: int = 0
    groups: dict[str, int] = field(default_factory=dict)
    ranks: list[int] = field(default_factory=list)
    alphas: list[float] = field(default_factory=list)
    alpha_source: str = ""
    targets: list[str] = field(default_factory=list)
    dtypes: list[str] = field(default_factory=list)
    parameters: int = 0
    base_model: str | None = None
    made_by: str = "unknown"
    metadata: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class FileKind:
    """A backend's answer: what the file is and how ``inspect`` reads it."""

    format: str
    groups: Mapping[str, str] = field(default_factory=dict)
    kohya_names: bool = False
    inspect: Path | None = None
    summary: LoraSummary | None = None
    notes: tuple[str, ...] = ()
