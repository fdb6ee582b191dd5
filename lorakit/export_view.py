"""What a backend hands to exporters: a typed, read-only view of the trained adapter.

An exporter (``ExporterSpec.factory(view, directory, name, metadata)``) writes files from an
:class:`AdapterExport` and nothing else: it never sees the backend object, so a backend's
attributes are not a second, unwritten contract. :meth:`lorakit.backend.Backend.adapter_export`
builds the view at export time (inside the engine's ``gathered()``, so the tensors are whole
under ZeRO-3 / FSDP). Tensors are produced lazily (``state_dict()``, ``layers()``): an
exporter that does not need them costs nothing. No torch is imported here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Network:
    """The adapter's network: its type and sizes, as the config asked for them.

    ``type`` is ``lora`` (or ``locon``, ``loha``, ``lokr``, ``dora``); ``rank`` / ``alpha``
    the default of every module (a module's own alpha is in its :class:`AdapterLayer`);
    ``conv_rank`` / ``conv_alpha`` the 3x3 convolutions' (LoCon; 0: none); ``args`` the
    network's other options as kohya's ``ss_network_args`` records them (strings).
    """

    type: str = "lora"
    rank: int = 0
    alpha: float = 0.0
    dropout: float = 0.0
    conv_rank: int = 0
    conv_alpha: float | None = None
    args: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class AdapterLayer:
    """One adapted module: which model (``component``: ``unet``, ``transformer``, ``te1``,
    ``te2``, ``model``), its ``path`` in that model, its tensors by name and its alpha.

    A plain LoRA's tensors are ``lora_down.weight`` ([r, in, ...]) and ``lora_up.weight``
    ([out, r, ...]); LoHa / LoKr / DoRA layers carry LyCORIS's names (``hada_w1_a``,
    ``lokr_w1``, ``dora_scale``, ``alpha``...).
    """

    component: str
    path: str
    tensors: Mapping[str, Any]
    alpha: float


def _no_layers() -> Sequence[AdapterLayer]:
    return ()


@dataclass(frozen=True)
class AdapterExport:
    """The trained adapter and what the backend knows about it.

    - ``backend``: the backend's name (``sd``, ``llm``);
    - ``network``: type, rank, alpha (:class:`Network`);
    - ``state_dict()``: the trainable tensors by their names in the backend's trainable
      module (what the built-in ``safetensors`` exporter writes), on the CPU or not;
    - ``layers()``: every adapted module with its tensors (:class:`AdapterLayer`), for
      exporters that rename modules into a file layout (kohya, diffusers);
    - ``family``: the model family (``sd1``, ``sdxl``, ``sd3``, ``flux1``, a transformers
      ``model_type``); ``base_model``: as the config names it; ``resolution``: the training
      resolution of an image model; ``started_at``: Unix time the run first started;
    - ``save_dtype``: the dtype the backend's files are written in (``float16``...);
    - ``model_config``: the adapted base model's own config (for image models, the
      denoiser's diffusers config with its ``_class_name``, as its config.json holds it):
      what a layout conversion reads to rename modules;
    - ``metadata``: what the backend knows of the run, as header strings (for ``sd``, the
      kohya ``ss_*`` keys: dataset tags and folders, timestamps, steps and epoch, caption
      length...), written by the exporters that use them;
    - ``save_pretrained(folder)``: writes the adapter in its library's own folder layout
      (PEFT's ``save_pretrained``), for backends that have one; ``chat_template`` the
      template a chat model was trained with.
    """

    backend: str
    network: Network
    state_dict: Callable[[], Mapping[str, Any]]
    layers: Callable[[], Sequence[AdapterLayer]] = _no_layers
    family: str = ""
    base_model: str = ""
    resolution: int | None = None
    started_at: float = 0.0
    save_dtype: str = "float32"
    model_config: Mapping[str, Any] = field(default_factory=dict)
    metadata: Mapping[str, str] = field(default_factory=dict)
    save_pretrained: Callable[[Path], None] | None = None
    chat_template: str | None = None


#: What an exporter is: ``(view, directory, name, metadata) -> the paths it wrote``.
Exporter = Callable[[AdapterExport, Path, str, dict[str, str]], list[Path]]
