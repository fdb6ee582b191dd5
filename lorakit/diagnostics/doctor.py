"""``lorakit doctor``: is this install healthy and ready to train?

Each check returns one :class:`Check`: ✓ (fine), ⚠ (works, but worth knowing) or ✗ (will
fail), with a one-line fix. The command exits 1 when any check is ✗. torch is imported
inside its check only; every other check reads package metadata and the environment.

The tested set is ``lorakit/diagnostics/tested_versions.txt``: a copy of the repository's
``constraints.txt`` shipped as package data, so an installed lorakit knows which versions
its release was tested with (a test keeps the two identical). A check's result and the
printed lines are :mod:`lorakit.diagnostics.checks`; the disk and Hugging Face cache checks
are :mod:`lorakit.diagnostics.storage`.
"""

from __future__ import annotations

import importlib.metadata as md
import sys
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from lorakit import __version__
from lorakit.diagnostics.checks import Check, marks, render
from lorakit.diagnostics.storage import GiB, check_disk, check_hf, hf_cache_dir

#: GPU memory below which training needs the low-memory settings.
SMALL_GPU_BYTES = 8 * GiB
#: The libraries whose version decides whether training works, compared to the tested set.
KEY_LIBRARIES = (
    "torch",
    "accelerate",
    "diffusers",
    "transformers",
    "peft",
    "safetensors",
    "tokenizers",
    "huggingface_hub",
    "bitsandbytes",
    "deepspeed",
    "gguf",
    "dadaptation",
    "prodigyopt",
    "pydantic",
    "pluggy",
    "typer",
)
#: Version pairs known to break each other: (lib, spec, other, spec, why, fix).
KNOWN_CONFLICTS = (
    (
        "transformers",
        ">=5.24",
        "peft",
        "<0.22",
        "transformers 5.24+ refuses peft < 0.22: adapters fail with 'The version of PEFT you "
        "are using is not compatible'",
        "pip install 'transformers<5.24' (or peft>=0.22)",
    ),
)


def _version(name: str) -> str | None:
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None


# -- tested set ----------------------------------------------------------------------


def parse_pins(text: str) -> dict[str, str]:
    """``name==version`` lines of a constraints file → ``{canonical name: version}``."""
    pins: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        try:
            req = Requirement(line)
        except InvalidRequirement:
            continue
        exact = [s.version for s in req.specifier if s.operator in {"==", "==="}]
        if exact:
            pins[canonicalize_name(req.name)] = exact[0]
    return pins


def tested_versions() -> dict[str, str]:
    """The versions this release was tested with (package data, see the module docstring)."""
    try:
        text = (
            resources.files("lorakit.diagnostics")
            .joinpath("tested_versions.txt")
            .read_text("utf-8")
        )
    except (OSError, ModuleNotFoundError):
        return {}
    return parse_pins(text)


# -- checks --------------------------------------------------------------------------


def check_python() -> Check:
    here = ".".join(str(v) for v in sys.version_info[:3])
    try:
        requires = md.metadata("lorakit").get_all("Requires-Python") or [""]
        spec = SpecifierSet(requires[0])
    except (md.PackageNotFoundError, InvalidSpecifier):
        spec = SpecifierSet()
    if spec and here not in spec:
        return Check(
            "python", "fail", f"Python {here}; lorakit needs {spec}", f"use a Python {spec}"
        )
    return Check("python", "ok", f"Python {here} ({sys.executable})")


def check_torch() -> list[Check]:
    """torch imports, and which accelerator it can use (CUDA, ROCm, MPS, CPU)."""
    try:
        import torch
    except Exception as exc:  # noqa: BLE001 - a broken torch is what this check reports
        tested = tested_versions().get("torch")
        fix = f"pip install torch=={tested}" if tested else "pip install torch"
        return [Check("torch", "fail", f"torch does not import: {type(exc).__name__}: {exc}", fix)]
    checks = [Check("torch", "ok", f"torch {torch.__version__}")]
    built_for = torch.version.cuda or getattr(torch.version, "hip", None)
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            total = props.total_memory
            try:
                free = torch.cuda.mem_get_info(i)[0]
                free_text = f", {free / GiB:.1f} GiB free"
            except Exception:  # noqa: BLE001 - free memory is a nice-to-have
                free_text = ""
            kind = (
                f"ROCm {torch.version.hip}" if torch.version.hip else f"CUDA {torch.version.cuda}"
            )
            text = f"GPU {i}: {props.name}, {total / GiB:.1f} GiB{free_text} ({kind})"
            if total < SMALL_GPU_BYTES:
                checks.append(
                    Check(
                        "gpu",
                        "warn",
                        text + ": small for SD/LLM LoRA",
                        "set batch_size: 1, gradient_checkpointing: true, mixed_precision: "
                        "fp16 (and llm.load_in_4bit: true for language models)",
                    )
                )
            else:
                checks.append(Check("gpu", "ok", text))
    elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        checks.append(Check("gpu", "ok", "Apple MPS (unified memory)"))
    elif built_for:
        checks.append(
            Check(
                "gpu",
                "warn",
                f"torch is built for CUDA/ROCm {built_for}, but no GPU is usable",
                "check `nvidia-smi` and the driver, and that CUDA_VISIBLE_DEVICES is not empty",
            )
        )
    else:
        checks.append(
            Check(
                "gpu",
                "warn",
                "no GPU: training runs on the CPU (fine for tiny tests, slow otherwise)",
                "install a CUDA build of torch: https://pytorch.org/get-started/locally/",
            )
        )
    return checks


def check_tested_versions(tested: dict[str, str] | None = None) -> list[Check]:
    """Key libraries against the tested set: ⚠ for each one that differs or was not tested."""
    tested = tested_versions() if tested is None else tested
    if not tested:
        return [
            Check(
                "versions",
                "warn",
                "the tested set (tested_versions.txt) is missing",
                "reinstall lorakit: pip install --force-reinstall lorakit",
            )
        ]
    checks: list[Check] = []
    matching = 0
    for name in KEY_LIBRARIES:
        installed = _version(name)
        if installed is None:
            continue
        want = tested.get(canonicalize_name(name))
        if want is None:
            checks.append(
                Check(
                    "versions",
                    "warn",
                    f"{name} {installed} is not in lorakit {__version__}'s tested set",
                    f"fine if it works; remove it (pip uninstall {name}) if you see errors",
                )
            )
            continue
        try:
            same = Version(Version(installed).public) == Version(Version(want).public)
        except InvalidVersion:
            same = installed == want
        if same:
            matching += 1
        else:
            checks.append(
                Check(
                    "versions",
                    "warn",
                    f"{name} {installed} is untested (tested: {want})",
                    f"pip install '{name}=={want}' if something breaks",
                )
            )
    for lib, lib_spec, other, other_spec, why, fix in KNOWN_CONFLICTS:
        a, b = _version(lib), _version(other)
        if a and b and _in(a, lib_spec) and _in(b, other_spec):
            checks.append(Check("versions", "fail", f"{lib} {a} with {other} {b}: {why}", fix))
    if matching:
        checks.insert(0, Check("versions", "ok", f"{matching} key libraries match the tested set"))
    return checks


def _in(version: str, spec: str) -> bool:
    try:
        return Version(version) in SpecifierSet(spec)
    except (InvalidVersion, InvalidSpecifier):
        return False


def unmet_requirements(distribution: str) -> list[str]:
    """A distribution's hard requirements that the installed packages do not satisfy."""
    try:
        requires = md.requires(distribution) or []
    except md.PackageNotFoundError:
        return []
    unmet: list[str] = []
    for line in requires:
        try:
            req = Requirement(line)
        except InvalidRequirement:
            continue
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        have = _version(req.name)
        if have is None:
            unmet.append(f"{req} (not installed)")
        elif req.specifier and not req.specifier.contains(have, prereleases=True):
            unmet.append(f"{req} (have {have})")
    return unmet


def check_plugins(plugins: Any = None) -> list[Check]:
    """Every plugin loads, speaks this plugin API, and has what its package requires."""
    from lorakit.errors import LorakitError
    from lorakit.plugins import get_plugins

    plugins = plugins or get_plugins()
    checks: list[Check] = []
    backends: list[str] | None = None
    try:
        backends = list(plugins.registries.backends.names())
    except LorakitError as exc:  # LORAKIT_STRICT_PLUGINS turns a plugin failure into this
        checks.append(
            Check("plugins", "fail", exc.format(), "unset LORAKIT_STRICT_PLUGINS to skip it")
        )
    seen: set[str] = set()
    for info in plugins.infos.values():
        if info.builtin:
            continue
        label = f"plugin {info.name} ({info.distribution} {info.version})"
        if info.status == "disabled":
            checks.append(Check("plugins", "warn", f"{label}: disabled by LORAKIT_DISABLE_PLUGINS"))
            continue
        if info.status != "ok":
            fix = (
                f"pip install -U {info.distribution}, or LORAKIT_DISABLE_PLUGINS={info.name} "
                "to skip it"
            )
            checks.append(Check("plugins", "fail", f"{label}: {info.error}", fix))
            continue
        unmet = [] if info.distribution in seen else unmet_requirements(info.distribution)
        seen.add(info.distribution)
        if unmet:
            checks.append(
                Check(
                    "plugins",
                    "fail",
                    f"{label} needs {'; '.join(unmet)}",
                    f"pip install -U {info.distribution} lorakit (or the versions it names)",
                )
            )
            continue
        registered = "; ".join(f"{k}: {', '.join(v)}" for k, v in info.registered.items())
        checks.append(
            Check(
                "plugins",
                "ok",
                f"{label}, API {info.api}" + (f": {registered}" if registered else ""),
            )
        )
    for conflict in plugins.conflicts:
        checks.append(
            Check(
                "plugins",
                "fail",
                conflict,
                "uninstall one of the two, or LORAKIT_DISABLE_PLUGINS=<name>",
            )
        )
    if backends == []:
        checks.append(
            Check(
                "plugins",
                "warn",
                "no backend installed: nothing to train",
                "pip install lorakit-sd (images) or lorakit-llm (language models)",
            )
        )
    unmet_core = unmet_requirements("lorakit")
    if unmet_core:
        checks.append(
            Check(
                "plugins",
                "fail",
                f"lorakit {__version__} needs {'; '.join(unmet_core)}",
                "pip install -U lorakit",
            )
        )
    return checks


@dataclass(frozen=True)
class OptionalDep:
    """An optional dependency: what needs it and how to install it."""

    package: str
    purpose: str
    install: str
    backends: tuple[str, ...] = ()


OPTIONAL = (
    OptionalDep(
        "bitsandbytes",
        "QLoRA (llm.load_in_4bit) and the adamw8bit optimizer",
        "pip install 'lorakit[bnb]'",
    ),
    OptionalDep("gguf", "GGUF base models (llm)", "pip install gguf", ("llm",)),
    OptionalDep("deepspeed", "distributed.strategy deepspeed_zero2/3", "pip install deepspeed"),
)


def needed_by_config(config: Any) -> dict[str, str]:
    """Optional packages a loaded config needs → the key that needs it."""
    needs: dict[str, str] = {}
    train = config.train
    if train.optimizer.endswith("8bit"):
        needs["bitsandbytes"] = f"optimizer: {train.optimizer}"
    if train.distributed.strategy.startswith("deepspeed"):
        needs["deepspeed"] = f"distributed.strategy: {train.distributed.strategy}"
    if str(train.base_model).lower().endswith(".gguf"):
        needs["gguf"] = "base_model is a .gguf file"
    section = config.section.model_dump() if config.section is not None else {}
    for key in ("load_in_4bit", "load_in_8bit"):
        if section.get(key):
            needs["bitsandbytes"] = f"{config.backend}.{key}: true"
    return needs


def check_optional(backends: list[str], config: Any = None) -> list[Check]:
    """Optional dependencies per backend: ✗ when the config needs a missing one, else ⚠."""
    needs = needed_by_config(config) if config is not None else {}
    checks: list[Check] = []
    for dep in OPTIONAL:
        if dep.backends and not set(dep.backends) & set(backends):
            continue
        installed = _version(dep.package)
        if installed:
            checks.append(Check("optional", "ok", f"{dep.package} {installed}: {dep.purpose}"))
        elif dep.package in needs:
            checks.append(
                Check(
                    "optional",
                    "fail",
                    f"{dep.package} is missing, and the config needs it ({needs[dep.package]})",
                    dep.install,
                )
            )
        elif config is None:
            checks.append(
                Check(
                    "optional",
                    "warn",
                    f"{dep.package} not installed: no {dep.purpose}",
                    dep.install,
                )
            )
    return checks


def check_update() -> list[Check]:
    """A newer lorakit, from the update-check cache only (no network)."""
    from lorakit.diagnostics.update_check import quiet_notice

    notice = quiet_notice()
    if notice is None:
        return []
    return [Check("update", "warn", notice.split(":")[0], "pip install -U lorakit")]


def check_selftest(plugins: Any = None) -> Check:
    """Whether lorakit, a plugin or a library changed since the last passing selftest."""
    from lorakit.diagnostics.selftest import changed_since_selftest

    changed = changed_since_selftest(plugins)
    if changed is None:
        return Check(
            "selftest", "ok", "never run here: `lorakit selftest` checks this install end to end"
        )
    if not changed:
        return Check("selftest", "ok", "passed with the versions installed now")
    shown = ", ".join(changed[:4]) + (f" (+{len(changed) - 4} more)" if len(changed) > 4 else "")
    return Check(
        "selftest",
        "warn",
        f"the install changed since the last selftest: {shown}",
        "run `lorakit selftest` (about a minute, offline)",
    )


# -- running -------------------------------------------------------------------------


def run_checks(
    *,
    output_dir: Path | None = None,
    config: Any = None,
    plugins: Any = None,
    tested: dict[str, str] | None = None,
) -> list[Check]:
    """Every check, in order. A check that crashes is reported, never raised."""
    from lorakit.plugins import get_plugins

    plugins = plugins or get_plugins()
    if output_dir is None:
        output_dir = Path(config.train.output_dir) if config is not None else Path.cwd()

    def backends() -> list[str]:
        try:
            return list(plugins.registries.backends.names())
        except Exception:  # noqa: BLE001 - reported by check_plugins
            return []

    steps: list[tuple[str, Callable[[], Check | list[Check]]]] = [
        ("python", check_python),
        ("torch", check_torch),
        ("versions", lambda: check_tested_versions(tested)),
        ("plugins", lambda: check_plugins(plugins)),
        ("optional", lambda: check_optional(backends(), config)),
        ("disk", lambda: check_disk(output_dir)),
        ("hf", check_hf),
        ("update", check_update),
        ("selftest", lambda: check_selftest(plugins)),
    ]
    checks: list[Check] = []
    for name, step in steps:
        try:
            result = step()
        except Exception as exc:  # noqa: BLE001 - doctor must finish
            result = Check(name, "warn", f"the check itself failed: {type(exc).__name__}: {exc}")
        checks += result if isinstance(result, list) else [result]
    return checks


__all__ = [
    "Check",
    "check_disk",
    "check_hf",
    "check_optional",
    "check_plugins",
    "check_python",
    "check_selftest",
    "check_tested_versions",
    "check_torch",
    "check_update",
    "hf_cache_dir",
    "marks",
    "parse_pins",
    "render",
    "run_checks",
    "tested_versions",
    "unmet_requirements",
]
