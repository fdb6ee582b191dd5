"""FLUX.2 from split files, as ComfyUI users keep them: the transformer alone in BFL's
layout (bf16, or fp8 "scaled"), the text encoder and the VAE each in a file of their own.

The text encoder file holds transformers' parameter names (what a diffusers folder's
``text_encoder/`` shards hold), the VAE file diffusers' (``vae/``). They are found beside
the transformer file by their tensor names; what is not there comes from ``sd.base_config``
(a diffusers folder or hub id, which also gives the configs and the tokenizer). A part found
in neither is a one-line error naming it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lorakit.api import UsageError, read_safetensors_header

#: part -> a tensor name (suffix) only that part's file holds
MARKERS = {
    "vae": ("bn.running_mean",),
    "text_encoder": ("layers.0.self_attn.q_proj.weight",),
}


def find_siblings(path: Path) -> dict[str, Path]:
    """The text-encoder and VAE files beside ``path`` (by their tensor names)."""
    found: dict[str, Path] = {}
    for other in sorted(path.parent.glob("*.safetensors")):
        if other == path:
            continue
        try:
            names = list(read_safetensors_header(other).tensors)
        except Exception:  # noqa: BLE001 - not a readable safetensors file: not a part
            continue
        for part, marks in MARKERS.items():
            if part not in found and any(n.endswith(m) for n in names for m in marks):
                found[part] = other
    return found


def _load_part(config: Any, file: Path, part: str) -> Any:
    """The VAE (a diffusers config dict) or text encoder (a transformers config) of
    ``config`` with the weights of ``file``; a file that does not fit is one line."""
    import transformers
    from diffusers import AutoencoderKLFlux2
    from safetensors.torch import load_file

    from lorakit_sd.families.flux2.single_file import file_dtype

    state = load_file(str(file))
    if isinstance(config, dict):
        module = AutoencoderKLFlux2.from_config(config)
        missing, unexpected = module.load_state_dict(state, strict=False)
        module.to(file_dtype(state))
    else:
        cls = getattr(transformers, config.architectures[0])
        module, info = cls.from_pretrained(
            None,
            config=config,
            state_dict=state,
            output_loading_info=True,
            dtype=file_dtype(state),
        )
        missing, unexpected = info["missing_keys"], info["unexpected_keys"]
    missing = [m for m in missing if not m.endswith("lm_head.weight")]  # tied to the embeddings
    if missing or unexpected:
        wrong = sorted(missing or unexpected)[0]
        raise UsageError(f"{file}: not the {part} of this model ({wrong} does not fit)")
    return module


def load_split(family: Any, path: Path, config: str, local: bool) -> Any:
    """The pipeline of a FLUX.2 transformer file, with the parts beside it or in ``config``."""
    from diffusers import AutoencoderKLFlux2
    from transformers import AutoConfig

    from lorakit_sd.families.flux2.single_file import load_transformer

    path = Path(path)
    transformer = load_transformer(path, config, local)
    siblings = find_siblings(path)
    for part in ("text_encoder", "vae"):
        if part not in siblings and not _has_weights(config, part):
            raise _missing(path, part.replace("_", " "), config)
    parts: dict[str, Any] = {"transformer": transformer}
    for part, file in siblings.items():
        what = part.replace("_", " ")
        try:
            if part == "vae":
                loaded = AutoencoderKLFlux2.load_config(
                    config, subfolder=part, local_files_only=local
                )
            else:
                loaded = AutoConfig.from_pretrained(config, subfolder=part, local_files_only=local)
        except (OSError, ValueError):
            raise _missing(path, f"{what} configuration", config) from None
        parts[part] = _load_part(loaded, file, what).eval()
    dtype = transformer.dtype  # the file's (bf16; fp8 files dequantize to bf16)
    try:
        return family.pipeline_class().from_pretrained(
            config, local_files_only=local, torch_dtype=dtype, **parts
        )
    except (OSError, ValueError) as exc:
        lost = next((p for p in ("text_encoder", "vae", "tokenizer") if p in str(exc)), None)
        if lost is not None:
            raise _missing(path, lost.replace("_", " "), config) from None
        raise


def _has_weights(config: str, part: str) -> bool:
    """Whether ``config`` holds ``part``'s weights (a hub id: left to ``from_pretrained``)."""
    folder = Path(config).expanduser()
    if not folder.is_dir():
        return True
    return any(any((folder / part).glob(pattern)) for pattern in ("*.safetensors", "*.bin"))


def _missing(path: Path, part: str, config: str) -> UsageError:
    return UsageError(
        f"{path}: a FLUX.2 transformer file; its {part} is missing: put its .safetensors "
        f"file beside it or set sd.base_config to a diffusers folder that has it ({config} "
        "does not)"
    )
