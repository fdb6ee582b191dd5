"""Loading SD1 / SDXL base models: a single checkpoint file, a diffusers folder, a hub id.

The family (SD1 or SDXL) comes from the weights: a single file's key names (SDXL has
``conditioner.embedders.1``), a folder's or repo's second text encoder. A single file needs
configs and tokenizers that are not in it; they come from ``sd.base_config`` (a diffusers
folder or hub id) or, by default, the standard SD1.5 / SDXL repo in the local hub cache.
Pickled checkpoints (``.ckpt``, ``.pt``) are refused unless ``allow_unsafe_pickle`` is set,
which the backend and the commands take from the command line (``--allow-unsafe-pickle``),
never from a config file.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lorakit.api import (
    UNSAFE_PICKLE_HINT,
    ConfigError,
    UsageError,
    check_gguf,
    read_safetensors_header,
)
from lorakit_sd import families
from lorakit_sd.families.ldm import detect_family

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")


@dataclass
class BaseModel:
    """A loaded base model: the diffusers pipeline and what it is."""

    pipe: Any
    family: str
    source: str  # single_file | diffusers | hub
    path: str

    @property
    def spec(self) -> Any:
        """The :class:`~lorakit_sd.families.base.ModelFamily` of this model."""
        return families.get(self.family)

    @property
    def denoiser(self) -> Any:
        """The UNet or the transformer."""
        return self.spec.denoiser(self.pipe)

    @property
    def text_encoders(self) -> list[Any]:
        """The text encoders LoRA may adapt (CLIPs; never T5)."""
        return self.spec.text_encoders(self.pipe)

    @property
    def tokenizers(self) -> list[Any]:
        return self.spec.tokenizers(self.pipe)


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


@contextlib.contextmanager
def quiet_libraries() -> Iterator[None]:
    """Silence diffusers/transformers progress bars and info logs while loading."""
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    old_d, old_t = dlog.get_verbosity(), tlog.get_verbosity()
    dlog.set_verbosity_error()
    tlog.set_verbosity_error()
    dlog.disable_progress_bar()
    tlog.disable_progress_bar()
    try:
        yield
    finally:
        dlog.set_verbosity(old_d)
        tlog.set_verbosity(old_t)
        dlog.enable_progress_bar()
        tlog.enable_progress_bar()


def pipeline_class(family: str) -> Any:
    return families.get(family).pipeline_class()


SINGLE_FILE_SUFFIXES = (".safetensors", ".gguf")


def single_file_keys(path: Path) -> list[str]:
    """Tensor names of a ``.safetensors`` (its header) or ``.gguf`` file."""
    if path.suffix.lower() == ".gguf":
        import gguf

        check_gguf(path)  # counts, lengths and offsets fit the file before the reader trusts them
        return [t.name for t in gguf.GGUFReader(str(path)).tensors]

    return list(read_safetensors_header(path).tensors)


def _trained(last: str = " and ") -> str:
    """The installed families' labels, as a list in a sentence."""
    labels = list(families.labels().values())
    return ", ".join(labels[:-1]) + last + labels[-1] if len(labels) > 1 else labels[0]


def family_of_keys(path: Path, keys: list[str]) -> str:

    family = families.of_keys(keys)
    if family is None and detect_family(keys) == "sd2":
        raise UsageError(f"{path}: an SD 2.x checkpoint; lorakit-sd trains {_trained()}")
    if family is None:
        sample = ", ".join(keys[:2]) or "no tensors"
        raise UsageError(f"{path}: not an {_trained(' or ')} checkpoint (starts with {sample})")
    return family


def family_of_folder(folder: Path) -> str:
    index = folder / "model_index.json"
    try:
        data = json.loads(index.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(
            f"{folder}: not a diffusers model folder (no model_index.json); "
            "point base_model at the folder that holds it, or at a .safetensors checkpoint"
        ) from None
    except json.JSONDecodeError as exc:
        raise UsageError(f"{index}: invalid JSON ({exc.msg})") from None
    family = families.of_index(data)
    if family is None:
        raise UsageError(f"{folder}: not a pipeline lorakit-sd trains ({data.get('_class_name')})")
    return family


def peek_family(base_model: str, model_family: str = "auto") -> str | None:
    """The family from file headers or model_index.json alone (None when that needs more)."""
    path = Path(base_model).expanduser()
    if path.is_file() and path.suffix.lower() in SINGLE_FILE_SUFFIXES:
        family = family_of_keys(path, single_file_keys(path))
    elif path.is_dir():
        family = family_of_folder(path)
    else:
        return None if model_family == "auto" else model_family
    return _check_family(family, model_family, str(path))


def _hub_folder(repo: str) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(
            snapshot_download(
                repo,
                allow_patterns=["model_index.json"],
                local_files_only=offline(),
            )
        )
    except Exception as exc:
        where = "the local hub cache (HF_HUB_OFFLINE is set)" if offline() else "the hub"
        raise UsageError(f"base_model {repo}: not found in {where}: {type(exc).__name__}") from None


def _check_family(found: str, wanted: str, where: str) -> str:
    """The family to load: ``found`` (from the files), or ``wanted`` (sd.model_family) when it
    reads ``found``'s files (an edit model on its base's architecture, whose files look the
    same); any other disagreement is one line naming both."""
    if wanted not in ("auto", found) and families.get(wanted).file_family == found:
        return wanted
    if wanted not in ("auto", found):
        raise ConfigError(
            f"{where} is {families.label(found)} but sd.model_family says {families.label(wanted)}",
            key="sd.model_family",
        )
    return found


def _unpickle_to_safetensors(path: Path, folder: Path) -> Path:
    """Load a pickled checkpoint (the user opted in) and rewrite it as safetensors in ``folder``.

    The caller owns ``folder`` (a temporary directory removed once the pipeline is loaded):
    a converted multi-GB checkpoint is never left behind.
    """
    import torch
    from safetensors.torch import save_file

    data = torch.load(path, map_location="cpu", weights_only=False)  # noqa: S614 - opted in
    while isinstance(data, dict) and "state_dict" in data:
        data = data["state_dict"]
    tensors = {k: v.contiguous().clone() for k, v in data.items() if isinstance(v, torch.Tensor)}
    out = folder / (path.stem + ".safetensors")
    save_file(tensors, str(out))
    return out


def load_base(
    base_model: str,
    *,
    base_config: str | None = None,
    model_family: str = "auto",
    allow_unsafe_pickle: bool = False,
    loader: str | None = None,
    registries: Any = None,
) -> BaseModel:
    """Load a base model as a float32 diffusers pipeline on the CPU, through a model loader.

    The loader is the registered ``sd`` model loader that detects ``base_model`` (or the one
    named ``loader``, ``model_loader`` in a config): lorakit-sd registers a single file, a
    diffusers folder, a hub id and the opted-in pickled checkpoint; plugins may add more.
    """
    if registries is None:
        from lorakit.api import get_registries

        registries = get_registries()
    spec = registries.model_loader_for("sd", base_model, loader)
    return spec.load(
        base_model,
        base_config=base_config,
        model_family=model_family,
        allow_unsafe_pickle=allow_unsafe_pickle,
    )


# -- the model loaders lorakit-sd registers (detect: cheap; load: the pipeline) ---------------


def is_pickled_file(source: str) -> bool:
    path = Path(source).expanduser()
    return path.suffix.lower() in PICKLE_SUFFIXES and path.is_file()


def is_single_file(source: str) -> bool:
    path = Path(source).expanduser()
    return path.is_file() and path.suffix.lower() not in PICKLE_SUFFIXES


def is_folder(source: str) -> bool:
    return Path(source).expanduser().is_dir()


def is_hub_id(source: str) -> bool:
    """Anything that is not a file or folder here (a path that does not exist is refused)."""
    return not Path(source).expanduser().exists()


def load_pickled(
    source: str,
    *,
    base_config: str | None = None,
    model_family: str = "auto",
    allow_unsafe_pickle: bool = False,
) -> BaseModel:
    """A pickled ``.ckpt``/``.pt``: refused unless opted in; converted in a temporary folder."""
    path = Path(source).expanduser()
    if not allow_unsafe_pickle:
        raise UsageError(
            f"{path}: a pickled checkpoint can run code when loaded; {UNSAFE_PICKLE_HINT}"
        )
    print(f"lorakit: unpickling {path} (allowed on this command)", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(prefix="lorakit-sd-") as folder:
        converted = _unpickle_to_safetensors(path, Path(folder))
        model = load_single_file(str(converted), base_config=base_config, model_family=model_family)
    model.path = str(path)
    return model


def _no_config(path: Path, config: str, why: str) -> UsageError:
    return UsageError(
        f"{path}: a single-file checkpoint needs its model's configs and tokenizer; they "
        f"come from {config}, which could not be read ({why}). Set sd.base_config (or pass "
        f"--base-config) to a diffusers folder of the same model family"
        f"{', or run once online' if offline() else ''}"
    )


def check_single_file(source: str, section: Any = None) -> None:
    """What :func:`load_single_file` would refuse for want of configs, from the file's
    header and the local hub cache only (``config validate`` and the start of ``train``)."""
    path = Path(source).expanduser()
    if path.suffix.lower() not in SINGLE_FILE_SUFFIXES or not path.is_file():
        return
    found = family_of_keys(path, single_file_keys(path))
    family = _check_family(found, getattr(section, "model_family", "auto"), str(path))
    base_config = getattr(section, "base_config", None)
    if base_config:
        if Path(base_config).expanduser().is_dir():
            if not (Path(base_config).expanduser() / "model_index.json").is_file():
                raise UsageError(
                    f"sd.base_config {base_config}: not a diffusers folder (no model_index.json)"
                )
            return
        if base_config.startswith((".", "/", "~")):
            raise UsageError(f"sd.base_config {base_config}: folder not found")
    config = base_config or families.get(family).default_config_repo
    if offline() and not Path(config).is_dir():
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(config, "model_index.json"), str):
            raise _no_config(path, config, "not in the local hub cache, and HF_HUB_OFFLINE is set")


def load_single_file(
    source: str, *, base_config: str | None = None, model_family: str = "auto", **_: Any
) -> BaseModel:
    """An original-layout (LDM / SGM / BFL) ``.safetensors`` checkpoint, or a FLUX.1 ``.gguf``."""
    path = Path(source).expanduser()
    if path.suffix.lower() not in SINGLE_FILE_SUFFIXES:
        raise UsageError(f"{path}: base_model must be a .safetensors or .gguf file, or a folder")
    keys = single_file_keys(path)
    family = _check_family(family_of_keys(path, keys), model_family, str(path))
    config = base_config or families.get(family).default_config_repo
    with quiet_libraries():
        try:
            pipe = families.get(family).load_single_file(
                path, keys, config, offline() or Path(config).is_dir()
            )
        except (OSError, ValueError, KeyError) as exc:
            if not base_config:
                raise _no_config(path, config, type(exc).__name__) from None
            raise UsageError(
                f"{path}: could not load with sd.base_config {config}: {exc}"
            ) from None
    return _finish(BaseModel(pipe, family, "single_file", str(path)))


def load_folder(source: str, *, model_family: str = "auto", **_: Any) -> BaseModel:
    """A diffusers pipeline folder (``model_index.json``)."""
    path = Path(source).expanduser()
    family = _check_family(family_of_folder(path), model_family, str(path))
    with quiet_libraries():
        pipe = pipeline_class(family).from_pretrained(str(path), **_load_kwargs(family, path))
    return _finish(BaseModel(pipe, family, "diffusers", str(path)))


def _load_kwargs(family: str, folder: Path) -> dict[str, Any]:
    """``from_pretrained``'s arguments: the family's, and the stored dtype where the family
    loads in it (``ModelFamily.load_in_stored_dtype``)."""
    import torch

    spec = families.get(family)
    kwargs = dict(spec.pipeline_kwargs())
    if spec.load_in_stored_dtype:
        kwargs["torch_dtype"] = getattr(torch, stored_dtype(str(folder), {}))
    return kwargs


def load_hub(source: str, *, model_family: str = "auto", **_: Any) -> BaseModel:
    """A hub id (``owner/name``), from the local cache when HF_HUB_OFFLINE is set."""
    if source.lower().endswith(PICKLE_SUFFIXES + SINGLE_FILE_SUFFIXES) or source.startswith(
        (".", "/", "~")
    ):
        raise UsageError(f"base_model: file or folder not found: {source}")
    folder = _hub_folder(source)
    family = _check_family(family_of_folder(folder), model_family, source)
    with quiet_libraries():
        try:
            pipe = pipeline_class(family).from_pretrained(
                source, local_files_only=offline(), **_load_kwargs(family, folder)
            )
        except OSError as exc:
            raise UsageError(f"base_model {source}: cannot load ({exc})") from None
    return _finish(BaseModel(pipe, family, "hub", source))


def _finish(model: BaseModel) -> BaseModel:
    """Attention through torch's SDPA; everything frozen; float32 (a quantized
    transformer keeps its quantized weights, a family that loads in its stored dtype keeps
    it: the backend casts to the run's dtype)."""
    import torch

    pipe = model.pipe
    model.spec.finish(pipe)
    keep = model.spec.load_in_stored_dtype
    with quiet_libraries():
        for module in (model.denoiser, pipe.vae, *model.spec.all_text_encoders(pipe)):
            module.requires_grad_(False)
            if not keep and not getattr(module, "is_quantized", False):  # GGUF: its own dtypes
                module.to(torch.float32)
            module.eval()
    return model


#: the dtypes a merged checkpoint may be written in
DTYPES = ("float32", "float16", "bfloat16")


def stored_dtype(base: str, state: dict[str, Any]) -> str:
    """The dtype the base stores its weights in: most of a single file's floating tensors
    (``state``, or the file's header when empty), or a diffusers folder's UNet / transformer
    file; float32 where it cannot be told (nothing is lost)."""
    from collections import Counter

    from safetensors import safe_open

    path = Path(base).expanduser()
    counts: Counter[str] = Counter()
    if path.is_dir() or (path.is_file() and not state):
        found = [path] if path.is_file() else []
        for part in ("unet", "transformer"):
            found = found or sorted((path / part).glob("*.safetensors"))
        for weights in found[:1]:
            with safe_open(str(weights), framework="pt") as f:
                counts.update(str(f.get_slice(k).get_dtype()) for k in list(f.keys())[:50])
        names = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}
        counts = Counter({names.get(k, k): v for k, v in counts.items()})
    elif path.is_file():
        counts.update(
            str(v.dtype).removeprefix("torch.") for v in state.values() if v.is_floating_point()
        )
    common = [d for d, _ in counts.most_common() if d in DTYPES]
    return common[0] if common else "float32"
