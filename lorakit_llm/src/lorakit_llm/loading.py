"""Loading a base model and its tokenizer: a folder, a hub id, or a ``.gguf`` file.

- A folder (``config.json`` + weights) or a hub id goes to ``from_pretrained``; a hub id
  respects ``HF_HUB_OFFLINE`` (only the local cache is read when it is set).
- A ``.gguf`` file goes through transformers' GGUF loader (needs the ``gguf`` package); its
  weights are dequantized to the training dtype, and its tokenizer and chat template are
  read from the file's metadata.
- An old GGML file (``ggjt``, ``ggml``, ``ggmf``, ``ggla`` magic, e.g.
  ``llama-2-7b-chat.ggmlv3.q4_0.bin``) is recognised by its first bytes and refused with a
  message that says how to convert it.
- ``load_in_4bit`` loads the weights in 4-bit NF4 through bitsandbytes (QLoRA): CUDA only.
- Weights are read from safetensors (or GGUF) only: a folder or hub repo whose weights are
  pickles (``pytorch_model.bin``) is refused unless the command allows unpickling
  (``--allow-unsafe-pickle``), as a GGUF is checked (:func:`lorakit.api.check_gguf`) before
  any reader sees it, and a loaded model missing weights of its file is refused.

These are registered as model loaders of the ``llm`` backend (``hf``, ``gguf``, ``ggml``; see
:data:`LOADERS`), and every caller (training, chat, sample, merge) goes through
``registries.model_loader_for("llm", source, name)``, so a plugin can add a format. The
contract of an ``llm`` loader: ``load(source, *, dtype, load_in_4bit=False,
attn_implementation=None, device=None, check=False)`` returns ``(model, tokenizer)``; with
``check=True`` it only validates ``source`` (cheap: no weights) and returns None, or raises a
one-line :class:`UsageError`.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lorakit.api import UNSAFE_PICKLE_HINT, UsageError, check_gguf, unsafe_pickle_allowed

GGUF_MAGIC = b"GGUF"
#: Old llama.cpp formats, as the bytes that start the file (a little-endian uint32 magic).
GGML_MAGICS = {b"tjgg": "ggjt", b"lmgg": "ggml", b"fmgg": "ggmf", b"algg": "ggla"}
DTYPES = ("float32", "bfloat16", "float16")


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def file_magic(path: Path) -> str | None:
    """``gguf``, a GGML magic name (``ggjt`` ...), or None for anything else."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(4)
    except OSError:
        return None
    if head == GGUF_MAGIC:
        return "gguf"
    if head in GGML_MAGICS:
        return GGML_MAGICS[head]
    if head[::-1] in GGML_MAGICS:  # big-endian writers
        return GGML_MAGICS[head[::-1]]
    return None


def ggml_message(path: Path, magic: str) -> str:
    """What the file is and llama.cpp's command that converts it.

    ``convert_llama_ggml_to_gguf.py`` cannot read the RMS-norm epsilon from a GGML file and
    assumes 5e-6; LLaMA-2 needs ``--eps 1e-5`` (and ``--context-length 4096``), LLaMA-1
    ``--eps 1e-6``. The name tells LLaMA-2 apart; otherwise both choices are named.
    """
    stem = path.name.split(".")[0]
    llama2 = re.search(r"llama[-_ ]?2", path.name, re.IGNORECASE) is not None
    flags = "--eps 1e-5 --context-length 4096" if llama2 else "--eps 1e-5"
    which = "" if llama2 else " (--eps 1e-5 is LLaMA-2's; use --eps 1e-6 for LLaMA-1)"
    return (
        f"{path} is an old GGML model file (magic '{magic}'), not GGUF, and cannot be loaded; "
        f"convert it with llama.cpp's convert_llama_ggml_to_gguf.py "
        f"(python convert_llama_ggml_to_gguf.py --input {path.name} --output {stem}.gguf "
        f"{flags}){which} or use a GGUF, safetensors or hub version of the model"
    )


@dataclass(frozen=True)
class BaseSource:
    """Where from_pretrained reads: a folder or hub id, and the GGUF file name in it."""

    location: str
    gguf_file: str | None = None
    hub: bool = False

    @property
    def label(self) -> str:
        return f"{self.location}/{self.gguf_file}" if self.gguf_file else self.location


def resolve_base(base: str) -> BaseSource:
    """Classify ``base``, refusing GGML files and other things that are not a causal LM."""
    path = Path(base).expanduser()
    if path.is_file():
        magic = file_magic(path)
        if magic == "gguf":
            if importlib.util.find_spec("gguf") is None:
                raise UsageError(
                    f"{path}: loading a GGUF file needs the gguf package: pip install gguf"
                )
            check_gguf(path)  # counts, lengths and offsets fit the file: before any reader
            return BaseSource(str(path.resolve().parent), gguf_file=path.name)
        if magic is not None:
            raise UsageError(ggml_message(path, magic))
        if path.suffix == ".gguf":
            raise UsageError(f"{path}: not a GGUF file (it does not start with the GGUF magic)")
        raise UsageError(
            f"{path}: a single weights file; lorakit-llm loads a model folder "
            f"(config.json + weights), a hub id, or a .gguf file"
        )
    if path.is_dir():
        if (path / "config.json").is_file():
            pickled = sorted(p.name for p in path.glob("*.bin"))
            if pickled and not any(path.glob("*.safetensors")) and not unsafe_pickle_allowed():
                raise UsageError(
                    f"{path}: its weights are {pickled[0]}, a pickle that can run "
                    f"code when loaded; {UNSAFE_PICKLE_HINT}"
                )
            return BaseSource(str(path))
        if (path / "adapter_config.json").is_file():
            raise UsageError(f"{path} is a LoRA adapter, not a base model (no config.json)")
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return resolve_base(str(ggufs[0]))
        raise UsageError(f"{path}: no config.json (and not exactly one .gguf file) in this folder")
    if "/" in base and not base.startswith((".", "/", "~")):
        return BaseSource(base, hub=True)
    raise UsageError(f"base model not found: {base}")


def torch_dtype(name: str) -> Any:
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def _load_error(source: BaseSource, what: str, exc: Exception) -> UsageError:
    if source.hub and _offline():
        return UsageError(
            f"base model {source.location}: {what} is not in the local Hugging Face cache and "
            f"HF_HUB_OFFLINE=1 forbids downloading; download it first or give a local folder"
        )
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return UsageError(f"cannot load {what} of {source.label}: {text}")


def load_tokenizer(source: BaseSource) -> Any:
    from transformers import AutoTokenizer

    kwargs: dict[str, Any] = {"gguf_file": source.gguf_file} if source.gguf_file else {}
    try:
        tokenizer = AutoTokenizer.from_pretrained(source.location, **kwargs)
    except (OSError, ValueError, KeyError) as exc:
        raise _load_error(source, "the tokenizer", exc) from None
    if not getattr(tokenizer, "is_fast", False):
        raise UsageError(f"{source.label}: lorakit-llm needs a fast (tokenizers) tokenizer")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return tokenizer


def quantization_config(compute_dtype: Any) -> Any:
    """4-bit NF4 with double quantisation (QLoRA); errors that say what is missing."""
    import torch

    if not torch.cuda.is_available():
        raise UsageError(
            "llm.load_in_4bit: QLoRA needs a CUDA GPU (bitsandbytes 4-bit kernels) and this "
            "machine has none; set llm.load_in_4bit: false"
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        raise UsageError("llm.load_in_4bit needs bitsandbytes: pip install 'lorakit-llm[qlora]'")
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype,
    )


def gguf_tensor_count(path: Path) -> int | None:
    """The tensor count of a GGUF file's header (bytes 8-16, after magic and version)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(16)
    except OSError:
        return None
    return int.from_bytes(head[8:16], "little") if len(head) == 16 else None


def _reading_gguf(source: BaseSource, dtype: Any) -> None:
    """One line before the silent seconds of reading and dequantizing a GGUF file."""
    count = gguf_tensor_count(Path(source.location) / str(source.gguf_file))
    tensors = f"{count} tensors, " if count is not None else ""
    dtype_name = str(dtype).removeprefix("torch.")
    print(
        f"reading GGUF {source.gguf_file} ({tensors}dequantizing to {dtype_name})",
        file=sys.stderr,
        flush=True,
    )


def load_model(
    source: BaseSource,
    *,
    dtype: Any,
    load_in_4bit: bool = False,
    attn_implementation: str | None = None,
    device: Any = None,
) -> Any:
    """The causal LM in ``dtype`` (GGUF weights dequantized to it), or 4-bit for QLoRA.

    A GGUF file is loaded with ``GgufConfig(dequantize=True)``: every weight unpacked (by
    the ``gguf`` package's dequantizers) into a plain dense model, which trains, merges and
    saves like any other; transformers' packed GGUF layers can do none of these.
    """
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # lorakit shows its own progress; keep stderr for errors
    kwargs: dict[str, Any] = {"dtype": dtype}
    quiet = contextlib.nullcontext()
    if source.gguf_file:
        from transformers import GgufConfig

        kwargs["gguf_file"] = source.gguf_file
        if not load_in_4bit:
            kwargs["quantization_config"] = GgufConfig(dequantize=True)
        _reading_gguf(source, dtype)
        # transformers' GGUF reader draws its own tqdm bar, outside its progress-bar switch.
        quiet = contextlib.redirect_stderr(io.StringIO())  # type: ignore[assignment]
    elif not unsafe_pickle_allowed():  # a hub repo with only pytorch_model.bin: refused
        kwargs["use_safetensors"] = True
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if load_in_4bit:
        kwargs["quantization_config"] = quantization_config(dtype)
        index = getattr(device, "index", None)
        kwargs["device_map"] = {"": index if index is not None else 0}
    try:
        with quiet:  # with output_loading_info, a (model, info) pair its annotation omits
            loaded: Any = AutoModelForCausalLM.from_pretrained(
                source.location, output_loading_info=True, **kwargs
            )
        model, info = loaded
    except (OSError, ValueError, KeyError) as exc:
        raise _load_error(source, "the model", exc) from None
    check_complete(source, info.get("missing_keys") or ())
    return model


def check_complete(source: BaseSource, missing: Any) -> None:
    """Refuse a base whose file lacks weights the model has: transformers would fill them
    with fresh random values and training would go on, to the end, on garbage."""
    names = sorted(str(name) for name in missing)
    if names:
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        raise UsageError(
            f"{source.label}: {len(names)} weight(s) of the model are missing from the file "
            f"({shown}); they would start from random values: the file is damaged or "
            "incomplete"
        )


def load_base(
    base: str,
    *,
    dtype: Any,
    load_in_4bit: bool = False,
    attn_implementation: str | None = None,
    device: Any = None,
    loader: str | None = None,
    registries: Any = None,
) -> tuple[Any, Any]:
    """``(model, tokenizer)`` through the model loader that reads ``base`` (or ``loader``)."""
    spec = loader_for(base, loader, registries)
    result = spec.load(
        base,
        dtype=dtype,
        load_in_4bit=load_in_4bit,
        attn_implementation=attn_implementation,
        device=device,
    )
    model, tokenizer = result
    return model, tokenizer


# -- the loaders registered for the llm backend ----------------------------------------


def _file(source: str) -> Path | None:
    path = Path(source).expanduser()
    return path if path.is_file() else None


def detect_ggml(source: str) -> bool:
    """An old GGML file (``ggjt``/``ggml``/``ggmf``/``ggla`` magic)."""
    path = _file(source)
    return path is not None and (file_magic(path) or "gguf") != "gguf"


def load_ggml(source: str, *_: Any, **__: Any) -> Any:
    """Refuses, saying what the file is and how to convert it."""
    path = Path(source).expanduser()
    raise UsageError(ggml_message(path, file_magic(path) or "ggml"))


def detect_gguf(source: str) -> bool:
    """A ``.gguf`` file (by its magic or its name), or a folder holding exactly one."""
    path = Path(source).expanduser()
    if path.is_file():
        return file_magic(path) == "gguf" or path.suffix == ".gguf"
    if path.is_dir() and not (path / "config.json").is_file():
        return len(list(path.glob("*.gguf"))) == 1
    return False


def check_any(source: str, section: Any = None) -> None:
    """The ``hf`` and ``gguf`` loaders' check: what :func:`resolve_base` refuses."""
    resolve_base(source)


def detect_hf(source: str) -> bool:
    """Anything else: a transformers folder or a hub id (its errors say what is wrong)."""
    return True


def load_any(
    source: str,
    *,
    dtype: Any = None,
    load_in_4bit: bool = False,
    attn_implementation: str | None = None,
    device: Any = None,
    check: bool = False,
) -> Any:
    """The ``hf`` and ``gguf`` loaders: ``(model, tokenizer)``, or None with ``check``."""
    if check:
        check_any(source)
        return None
    base = resolve_base(source)
    tokenizer = load_tokenizer(base)
    model = load_model(
        base,
        dtype=dtype,
        load_in_4bit=load_in_4bit,
        attn_implementation=attn_implementation,
        device=device,
    )
    return model, tokenizer


def loader_for(source: str, name: str | None = None, registries: Any = None) -> Any:
    """The model loader of the llm backend that reads ``source`` (or the one ``name``d)."""
    from lorakit.api import get_registries

    return (registries or get_registries()).model_loader_for("llm", source, name)
