"""``lorakit inspect FILE``: what a LoRA file is, how it was trained, and what made it.

Reads only the safetensors header (names, dtypes, shapes, offsets, metadata) and the few
bytes of the 0-dim ``alpha`` tensors; never the weights, never torch. The installed
backends say what a file is (``BackendPlugin.identify``, :mod:`lorakit.identify`): lorakit-sd
names kohya / A1111 and diffusers files and their parts, lorakit-llm reads GGUF adapters and
run folders. Without an answer, the LoRA pairs (``lora_down``/``lora_up``,
``lora_A``/``lora_B``), PEFT adapter folders and lorakit's own ``lorakit.*`` metadata are
read as such. The header is checked by :mod:`lorakit.safetensors_header` before it is
trusted; a truncated or corrupt file is one :class:`~lorakit.errors.UsageError` line.
Pickles (``.ckpt``, ``.bin``...) are refused.
"""

from __future__ import annotations

import contextlib
import json
import math
import struct
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from lorakit.diagnostics.lora_names import _LYCORIS, _SUFFIXES, kohya_target, peft_target
from lorakit.errors import UsageError
from lorakit.identify import FileKind, FileProbe, LoraSummary
from lorakit.runfolder import RECORD, RunFolder
from lorakit.safetensors_header import TensorInfo, read_header

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl")
GGUF_MAGIC = b"GGUF"


@dataclass
class File:
    """A validated safetensors header, plus where the tensor bytes start."""

    path: Path
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str]
    data_start: int
    size: int


def read_file(path: Path) -> File:
    """Validate ``path``'s header (:mod:`lorakit.safetensors_header`); one-line errors."""
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise UsageError(
            "a pickle checkpoint; lorakit does not open pickles (it reads .safetensors)",
            where=str(path),
        )
    with path.open("rb") as f:
        head = f.read(8)
    if head[:4] == GGUF_MAGIC:
        raise UsageError(
            "a GGUF file, and no installed backend reads GGUF here (lorakit-llm does: "
            "pip install lorakit-llm)",
            where=str(path),
        )
    header = read_header(path)
    return File(path, header.tensors, header.metadata, header.data_start, path.stat().st_size)


def read_scalar(file: File, name: str, handle: BinaryIO | None = None) -> float | None:
    """The value of a 0-dim (or 1-element) tensor, reading only its bytes."""
    info = file.tensors[name]
    if math.prod(info.shape) != 1:
        return None
    with contextlib.ExitStack() as stack:
        f = handle or stack.enter_context(file.path.open("rb"))
        f.seek(file.data_start + info.start)
        raw = f.read(info.end - info.start)
    formats = {"F32": "<f", "F64": "<d", "F16": "<e", "I64": "<q", "I32": "<i"}
    if info.dtype in formats and len(raw) == struct.calcsize(formats[info.dtype]):
        return float(struct.unpack(formats[info.dtype], raw)[0])
    if info.dtype == "BF16" and len(raw) == 2:
        return float(struct.unpack("<f", b"\x00\x00" + raw)[0])
    return None


@dataclass
class Report(LoraSummary):
    """What ``lorakit inspect`` prints (``--json`` prints :meth:`as_dict`): a
    :class:`~lorakit.identify.LoraSummary` and what only safetensors and PEFT files tell."""

    path: str = ""
    format: str = ""
    other_tensors: int = 0
    dora: bool = False
    rslora: bool = False
    provenance: dict[str, Any] = field(default_factory=dict)
    adapter_config: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items()}


def _group(module: str, groups: Mapping[str, str], default: str) -> str:
    return next((g for p, g in groups.items() if module.startswith(p)), default)


def _analyse(header: File, report: Report, kind: FileKind | None) -> dict[str, str | None]:
    """Fill modules, ranks, targets from the tensor names and shapes; return module→alpha key."""
    modules: dict[str, dict[str, TensorInfo]] = {}
    alpha_keys: dict[str, str | None] = {}
    for name, info in header.tensors.items():
        report.parameters += math.prod(info.shape)
        for pattern, role in _SUFFIXES:
            match = pattern.match(name)
            if match:
                module = match.group("m")
                if role == "alpha":
                    alpha_keys[module] = name
                elif role == "dora":
                    report.dora = True
                else:
                    modules.setdefault(module, {})[role] = info
                break
        else:
            report.other_tensors += 1
    ranks: Counter[int] = Counter()
    groups: Counter[str] = Counter()
    targets: dict[str, None] = {}
    for module, parts in modules.items():
        if "down" in parts and parts["down"].shape:
            ranks[parts["down"].shape[0]] += 1
        elif "up" in parts and len(parts["up"].shape) > 1:
            ranks[parts["up"].shape[1]] += 1
        known = kind.groups if kind is not None else {}
        if kind is not None and kind.kohya_names:
            groups[_group(module, known, "?")] += 1
            targets[kohya_target(module, known)] = None
        else:
            groups[_group(module, known, "model")] += 1
            targets[peft_target(module)] = None
    report.modules = len(modules)
    report.ranks = sorted(ranks)
    report.groups = dict(groups)
    report.targets = sorted(targets)
    report.dtypes = sorted({i.dtype for i in header.tensors.values()})
    return {m: alpha_keys.get(m) for m in modules}


def _lorakit_provenance(metadata: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in metadata.items():
        if not key.startswith("lorakit."):
            continue
        short = key[len("lorakit.") :]
        if short in {"plugins", "config"}:
            try:
                out[short] = json.loads(value)
            except ValueError:
                out[short] = value
        else:
            out[short] = value
    return out


def _made_by(provenance: dict[str, Any], metadata: dict[str, str], peft: str | None) -> str:
    if provenance.get("version"):
        text = f"lorakit {provenance['version']}"
        plugins = provenance.get("plugins")
        if isinstance(plugins, dict) and plugins:
            text += " with " + ", ".join(f"{k} {v}" for k, v in sorted(plugins.items()))
        extra = [
            f"{label} {provenance[key]}"
            for key, label in (
                ("backend", "backend"),
                ("config_hash", "config hash"),
                ("step", "step"),
            )
            if provenance.get(key)
        ]
        return text + (f" ({', '.join(extra)})" if extra else "")
    if any(k.startswith("ss_") for k in metadata):
        commit = metadata.get("ss_sd_scripts_commit_hash")
        started = metadata.get("ss_training_started_at")
        bits = [f"commit {commit[:10]}" if commit else "", f"started {started}" if started else ""]
        detail = ", ".join(b for b in bits if b)
        return "kohya sd-scripts-style trainer (ss_* metadata)" + (f", {detail}" if detail else "")
    if peft:
        return f"PEFT {peft}"
    if "lora_adapter_metadata" in metadata:
        return "diffusers save_lora_weights"
    if metadata.get("modelspec.sai_model_spec"):
        return "a modelspec-aware trainer"
    return "unknown (no provenance metadata)"


def _alphas(report: Report, header: File, alpha_keys: dict[str, str | None]) -> None:
    """Alpha per module from the ``.alpha`` tensors (kohya), else alpha = rank."""
    values: set[float] = set()
    missing = 0
    with header.path.open("rb") as handle:
        read = [read_scalar(header, k, handle) if k else None for k in alpha_keys.values()]
    for value in read:
        if value is None:
            missing += 1
        else:
            values.add(round(value, 6))
    report.alphas = sorted(values)
    if values and not missing:
        report.alpha_source = ".alpha tensors"
    elif values:
        report.alpha_source = f".alpha tensors ({missing} modules without: alpha = rank)"
    else:
        report.alphas = [float(r) for r in report.ranks]
        report.alpha_source = "no .alpha tensors: alpha = rank"


def _alpha_from_config(report: Report, config: dict[str, Any], source: str) -> None:
    alpha = config.get("lora_alpha")
    rank = config.get("lora_rank", config.get("r"))
    if alpha is None and rank is not None:
        alpha, source = rank, f"{source} (lora_alpha unset: alpha = rank)"
    if isinstance(alpha, int | float):
        report.alphas = [float(alpha)]
        report.alpha_source = source


def inspect_safetensors(path: Path, header: File | None = None) -> Report:
    """Report on one safetensors LoRA file (its format as the installed backends name it)."""
    header = header or read_file(path)
    meta = header.metadata
    kind = identify(FileProbe(path, tuple(header.tensors), meta))
    kohya = kind is not None and kind.kohya_names
    lycoris = any(_LYCORIS.search(name) for name in header.tensors)
    provenance = _lorakit_provenance(meta)
    if kind is not None:
        fmt = kind.format
    elif provenance.get("version"):
        fmt = "lorakit (raw PEFT module names)"
    else:
        fmt = "PEFT keys"
    if lycoris:
        names = " ".join(header.tensors)
        algo = "LoHa" if ".hada_" in names else "LoKr" if ".lokr_" in names else "OFT"
        fmt = f"LyCORIS {algo} (kohya keys): not a plain LoRA"
    report = Report(header.size, path=str(path), format=fmt, metadata=meta, provenance=provenance)
    alpha_keys = _analyse(header, report, kind)
    report.notes.extend(kind.notes if kind is not None else ())
    if not report.modules and not lycoris:
        report.notes.append("no LoRA tensors found (lora_down/lora_up or lora_A/lora_B)")
    if kohya or any(alpha_keys.values()):
        _alphas(report, header, alpha_keys)
    else:
        if "lora_adapter_metadata" in meta:
            _diffusers_alpha(report, meta["lora_adapter_metadata"])
        if not report.alpha_source and isinstance(provenance.get("config"), dict):
            _alpha_from_config(report, provenance["config"], "lorakit.config metadata")
    if not report.alpha_source:
        report.alpha_source = "not in the file (PEFT keeps it in adapter_config.json)"
    report.base_model = (
        meta.get("ss_base_model_version")
        or meta.get("modelspec.architecture")
        or meta.get("ss_sd_model_name")
    )
    if report.base_model is None and isinstance(provenance.get("config"), dict):
        base = provenance["config"].get("base_model")
        report.base_model = str(base) if base else None
    if kohya and meta.get("ss_network_dim") and report.ranks:
        declared = meta["ss_network_dim"]
        if declared.isdigit() and int(declared) not in report.ranks:
            report.notes.append(f"ss_network_dim says {declared}, the tensors say {report.ranks}")
    report.made_by = _made_by(provenance, meta, None)
    return report


def _diffusers_alpha(report: Report, raw: str) -> None:
    try:
        data = json.loads(raw)
    except ValueError:
        return
    if not isinstance(data, dict):
        return
    alphas = {
        float(v)
        for k, v in data.items()
        if k.endswith(".lora_alpha") and isinstance(v, int | float)
    }
    if alphas:
        report.alphas = sorted(alphas)
        report.alpha_source = "diffusers lora_adapter_metadata"


def _json_object(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _from_record(record: dict[str, Any], source: str) -> dict[str, Any]:
    """Provenance from a ``run.json`` or an adapter's ``lorakit.json``."""
    return {
        "version": record["lorakit"],
        "plugins": record.get("plugins"),
        "backend": record.get("backend"),
        "config_hash": record.get("config_hash"),
        "step": record.get("step", record.get("steps")),
        "source": source,
    }


def inspect_adapter(folder: Path) -> Report:
    """Report on a PEFT adapter folder (``adapter_config.json`` + weights)."""
    config_file = folder / "adapter_config.json"
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(
            "not a PEFT adapter folder (no adapter_config.json)", where=str(folder)
        ) from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UsageError(f"cannot read adapter_config.json: {exc}", where=str(folder)) from None
    if not isinstance(config, dict):
        raise UsageError("adapter_config.json is not a JSON object", where=str(folder))
    weights = folder / "adapter_model.safetensors"
    if weights.is_file():
        report = inspect_safetensors(weights)
        report.path = str(folder)
    else:
        report = Report(0, path=str(folder))
        if (folder / "adapter_model.bin").is_file():
            report.notes.append("weights are adapter_model.bin (a pickle): not read")
        else:
            report.notes.append("no adapter_model.safetensors in the folder")
    report.format = f"PEFT adapter ({config.get('peft_type', 'LORA')}, {config.get('task_type') or 'no task type'})"
    report.adapter_config = config
    if isinstance(config.get("r"), int) and not report.ranks:
        report.ranks = [config["r"]]
    if isinstance(config.get("rank_pattern"), dict) and config["rank_pattern"]:
        report.notes.append(f"rank_pattern: {json.dumps(config['rank_pattern'])}")
    _alpha_from_config(report, config, "adapter_config.json")
    if isinstance(config.get("alpha_pattern"), dict) and config["alpha_pattern"]:
        report.notes.append(f"alpha_pattern: {json.dumps(config['alpha_pattern'])}")
    targets = config.get("target_modules")
    if isinstance(targets, list):
        report.targets = sorted(str(t) for t in targets)
    elif isinstance(targets, str):
        report.targets = [targets]
    report.dora = report.dora or bool(config.get("use_dora"))
    report.rslora = bool(config.get("use_rslora"))
    report.base_model = config.get("base_model_name_or_path") or report.base_model
    lorakit = config.get("lorakit")
    if isinstance(lorakit, dict) and not report.provenance:
        report.provenance = lorakit
    sidecar = folder / "lorakit.json"
    if not report.provenance.get("version") and sidecar.is_file():
        record = _json_object(sidecar)
        if record and record.get("lorakit"):
            report.provenance = _from_record(record, str(sidecar))
    run = RunFolder(folder.parent)
    if not report.provenance.get("version") and run.is_file(RECORD):
        record = run.try_json(RECORD)
        if record and record.get("lorakit"):
            report.provenance = _from_record(record, str(run.where(RECORD)))
    peft = config.get("peft_version")
    report.made_by = _made_by(report.provenance, report.metadata, str(peft) if peft else None)
    return report


def identify(probe: FileProbe) -> FileKind | None:
    """The first installed backend's answer to what ``probe`` is (None: none knows it)."""
    from lorakit.plugins import get_registries

    for entry in get_registries().backends:
        found = entry.spec.identify(probe)
        if found is not None:
            return found
    return None


def _from_summary(path: Path, kind: FileKind, summary: LoraSummary) -> Report:
    fields = {k: v for k, v in vars(summary).items() if k != "notes"}
    report = Report(**fields, path=str(path), format=kind.format)
    report.notes = [*summary.notes, *kind.notes]
    if not report.alpha_source:
        report.alpha_source = "not in the file"
    return report


def inspect_path(path: Path) -> Report:
    """Inspect a LoRA file or folder: what an installed backend identifies it as (a GGUF
    adapter, a run folder), else a safetensors file, a PEFT adapter folder, or its
    adapter_config.json."""
    if path.name == "adapter_config.json":
        path = path.parent
    if not path.exists():
        raise UsageError("no such file", where=str(path))
    if path.is_file():
        with path.open("rb") as handle:
            foreign = handle.read(4) == GGUF_MAGIC
        if not foreign:
            return inspect_safetensors(path)
    kind = identify(FileProbe(path))
    if kind is not None and kind.inspect is not None:
        same = kind.inspect.resolve() == path.resolve()
        report = inspect_adapter(path) if same else inspect_path(kind.inspect)
        report.path = str(path)
        report.format = (
            f"{report.format}, {kind.format}" if same else f"{kind.format}: {report.format}"
        )
        report.notes.extend(kind.notes)
        return report
    if kind is not None and kind.summary is not None:
        return _from_summary(path, kind, kind.summary)
    if path.is_dir():
        return inspect_adapter(path)
    return inspect_safetensors(path)


def _span(values: list[Any]) -> str:
    if not values:
        return "unknown"
    shown = [f"{v:g}" if isinstance(v, float) else str(v) for v in values]
    return shown[0] if len(shown) == 1 else f"{shown[0]}–{shown[-1]} (varies per module)"


def render(report: Report, *, all_metadata: bool = False) -> list[str]:
    """The lines ``lorakit inspect`` prints."""
    size = (
        f"{report.size_bytes / 1e6:.1f} MB"
        if report.size_bytes >= 1e6
        else f"{report.size_bytes / 1e3:.1f} kB"
    )
    lines = [f"{report.path}", f"  format:      {report.format}"]
    if report.size_bytes:
        dtypes = ", ".join(report.dtypes) or "-"
        lines.append(f"  size:        {size}, {report.parameters:,} parameters ({dtypes})")
    groups = ", ".join(f"{g} {n}" for g, n in sorted(report.groups.items()))
    lines.append(f"  modules:     {report.modules}" + (f" ({groups})" if groups else ""))
    lines.append(f"  rank:        {_span(report.ranks)}")
    alpha = _span(report.alphas)
    if len(report.alphas) == 1 and len(report.ranks) == 1 and report.ranks[0]:
        if report.rslora:
            scale = report.alphas[0] / math.sqrt(report.ranks[0])
            alpha += f" (rsLoRA: scale alpha/sqrt(rank) = {scale:g})"
        else:
            alpha += f" (scale alpha/rank = {report.alphas[0] / report.ranks[0]:g})"
    lines.append(f"  alpha:       {alpha}  [{report.alpha_source}]")
    if report.dora:
        lines.append("  DoRA:        yes (magnitude vectors)")
    if report.other_tensors:
        lines.append(
            f"  other:       {report.other_tensors} tensors that are not LoRA pairs "
            "(modules_to_save, embeddings...)"
        )
    targets = ", ".join(report.targets) or "unknown"
    lines.append(f"  targets:     {targets}")
    if report.base_model:
        lines.append(f"  base model:  {report.base_model}")
    lines.append(f"  made by:     {report.made_by}")
    for note in report.notes:
        lines.append(f"  note:        {note}")
    if report.metadata:
        lines.append("  metadata:")
        for key in sorted(report.metadata):
            value = report.metadata[key].replace("\n", " ")
            if not all_metadata and len(value) > 80:
                value = f"{value[:60]}… ({len(value)} chars; --metadata shows all)"
            lines.append(f"    {key}: {value}")
    return lines
