"""Loading SD1 / SDXL base models: a single checkpoint file, a diffusers folder, a hub id.

The family (SD1 or SDXL) comes from the weights: a single file's key names (SDXL has
``conditioner.embedders.1``), a folder's or repo's second text encoder. A single file needs
configs and tokenizers that are not in it; they come from ``sd.base_config`` (a diffusers
folder or hub id) or, by default, the standard SD1.5 / SDXL repo in the local hub cache.
Pickled checkpoints (``.ckpt``, ``.pt``) are refused unless ``allow_unsafe_pickle`` is set.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lorakit.api import ConfigError, UsageError

#: Where single-file checkpoints take their configs and tokenizers by default.
DEFAULT_CONFIG_REPOS = {
    "sd1": "stable-diffusion-v1-5/stable-diffusion-v1-5",
    "sdxl": "stabilityai/stable-diffusion-xl-base-1.0",
}
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
FAMILY_NAMES = {"sd1": "SD1.x", "sdxl": "SDXL"}


@dataclass
class BaseModel:
    """A loaded base model: the diffusers pipeline and what it is."""

    pipe: Any
    family: str
    source: str  # single_file | diffusers | hub
    path: str

    @property
    def text_encoders(self) -> list[Any]:
        encoders = [self.pipe.text_encoder]
        if self.family == "sdxl":
            encoders.append(self.pipe.text_encoder_2)
        return encoders

    @property
    def tokenizers(self) -> list[Any]:
        tokenizers = [self.pipe.tokenizer]
        if self.family == "sdxl":
            tokenizers.append(self.pipe.tokenizer_2)
        return tokenizers


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
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    return StableDiffusionXLPipeline if family == "sdxl" else StableDiffusionPipeline


def single_file_keys(path: Path) -> list[str]:
    from lorakit_sd.lora_format import read_header

    return [k for k in read_header(path) if k != "__metadata__"]


def family_of_keys(path: Path, keys: list[str]) -> str:
    from lorakit_sd.ldm import detect_family

    family = detect_family(keys)
    if family == "sd2":
        raise UsageError(f"{path}: an SD 2.x checkpoint; lorakit-sd trains SD1.x and SDXL")
    if family is None:
        sample = ", ".join(keys[:2]) or "no tensors"
        raise UsageError(
            f"{path}: not an SD1 or SDXL checkpoint (no text-encoder keys; starts with {sample})"
        )
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
    if data.get("text_encoder_2") and data["text_encoder_2"][0] is not None:
        return "sdxl"
    if "unet" not in data:
        raise UsageError(f"{folder}: not a Stable Diffusion pipeline ({data.get('_class_name')})")
    return "sd1"


def peek_family(base_model: str, model_family: str = "auto") -> str | None:
    """The family from file headers or model_index.json alone (None when that needs more)."""
    path = Path(base_model).expanduser()
    if path.is_file() and path.suffix.lower() == ".safetensors":
        family = family_of_keys(path, single_file_keys(path))
    elif path.is_dir():
        family = family_of_folder(path)
    else:
        return None if model_family == "auto" else model_family
    _check_family(family, model_family, str(path))
    return family


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


def _check_family(found: str, wanted: str, where: str) -> None:
    if wanted not in ("auto", found):
        raise ConfigError(
            f"{where} is {FAMILY_NAMES[found]} but sd.model_family says {FAMILY_NAMES[wanted]}",
            key="sd.model_family",
        )


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
) -> BaseModel:
    """Load a base model as a float32 diffusers pipeline on the CPU."""
    path = Path(base_model).expanduser()
    if path.is_file() and path.suffix.lower() in PICKLE_SUFFIXES:
        if not allow_unsafe_pickle:
            raise UsageError(
                f"{path}: a pickled checkpoint can run code when loaded; convert it to "
                ".safetensors, or set sd.allow_unsafe_pickle: true if you trust the file"
            )
        with tempfile.TemporaryDirectory(prefix="lorakit-sd-") as folder:
            converted = _unpickle_to_safetensors(path, Path(folder))
            model = load_base(str(converted), base_config=base_config, model_family=model_family)
        model.path = str(path)
        return model
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix != ".safetensors":
            raise UsageError(f"{path}: base_model must be a .safetensors file or a folder")
        family = family_of_keys(path, single_file_keys(path))
        _check_family(family, model_family, str(path))
        config = base_config or DEFAULT_CONFIG_REPOS[family]
        with quiet_libraries():
            try:
                pipe = pipeline_class(family).from_single_file(
                    str(path), config=config, local_files_only=offline() or Path(config).is_dir()
                )
            except (OSError, ValueError, KeyError) as exc:
                if not base_config:
                    raise UsageError(
                        f"{path}: a single-file checkpoint needs its model's configs and "
                        f"tokenizer; they come from {config}, which could not be read "
                        f"({type(exc).__name__}). Set sd.base_config to a diffusers folder of "
                        f"the same model family{', or run once online' if offline() else ''}"
                    ) from None
                raise UsageError(
                    f"{path}: could not load with sd.base_config {config}: {exc}"
                ) from None
        return _finish(BaseModel(pipe, family, "single_file", str(path)))
    if path.is_dir():
        family = family_of_folder(path)
        _check_family(family, model_family, str(path))
        with quiet_libraries():
            pipe = pipeline_class(family).from_pretrained(str(path), **_no_checker(family))
        return _finish(BaseModel(pipe, family, "diffusers", str(path)))
    if base_model.lower().endswith(PICKLE_SUFFIXES + (".safetensors",)) or base_model.startswith(
        (".", "/", "~")
    ):
        raise UsageError(f"base_model: file or folder not found: {base_model}")
    folder = _hub_folder(base_model)
    family = family_of_folder(folder)
    _check_family(family, model_family, base_model)
    with quiet_libraries():
        try:
            pipe = pipeline_class(family).from_pretrained(
                base_model, local_files_only=offline(), **_no_checker(family)
            )
        except OSError as exc:
            raise UsageError(f"base_model {base_model}: cannot load ({exc})") from None
    return _finish(BaseModel(pipe, family, "hub", base_model))


def _no_checker(family: str) -> dict[str, Any]:
    """SD1 repos ship a safety checker (a CLIP vision model): training never needs it."""
    if family == "sdxl":
        return {}
    return {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}


def _finish(model: BaseModel) -> BaseModel:
    """Attention through torch's SDPA; everything frozen; float32."""
    import torch
    from diffusers.models.attention_processor import AttnProcessor2_0

    pipe = model.pipe
    pipe.unet.set_attn_processor(AttnProcessor2_0())
    with quiet_libraries():
        for module in (pipe.unet, pipe.vae, *model.text_encoders):
            module.requires_grad_(False)
            module.to(torch.float32)
            module.eval()
    return model
