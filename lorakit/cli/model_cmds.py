"""``lorakit export``, ``merge`` and ``sample``: the core parses, the backend does the work.

Each dispatches to the backend's :class:`lorakit.backend_plugin.BackendPlugin` (its ``export``,
``merge`` or ``sample``), choosing the backend by ``--backend``, by the config,
or by asking each backend's ``detect`` whether it recognises the LoRA file.

One rule for every command that reads a base model, as for ``train``: ``--config FILE``
gives the backend's settings (and the base model, unless ``--base`` is given), ``--set
KEY=VALUE`` overrides a key, and ``--base-config DIR`` is short for ``--set
<backend>.base_config=DIR`` (the diffusers config folder a single-file base needs offline).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from lorakit.backend_plugin import BackendPlugin
from lorakit.cli.options import AllowPickleOpt, BaseConfigOption, SetOpt
from lorakit.errors import UsageError
from lorakit.io import parse_lora

#: LoRA files that are pickles: refused, never loaded (a LoRA needs no unpickling).
PICKLED_LORAS = (".bin", ".pt", ".pth", ".ckpt", ".pkl")

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="A run's config: its base model and backend settings."),
]


def command_config(
    backend: str, config: Path | None, overrides: list[str] | None, base_config: str | None
) -> Any:
    """The config a model command reads its backend's settings from, or None.

    ``--config`` is read as ``train`` reads it (without checking the data paths); without
    it, ``--set`` / ``--base-config`` apply to the backend's defaults.
    """
    from lorakit.config import load_config

    sets = list(overrides or [])
    if base_config:
        sets.append(f"{backend}.base_config={base_config}")
    if config is None and not sets:
        return None
    if config is not None:
        return load_config(config, overrides=sets, check_paths=False)
    stub = {"backend": backend, "base_model": "-", "train_data_dir": "."}
    return load_config(data=stub, overrides=sets, check_paths=False)


def pick_backend(name: str | None, paths: list[str], verb: str) -> tuple[str, BackendPlugin]:
    """``(backend name, the backend)`` for ``verb``."""
    from lorakit.plugins import get_plugins
    from lorakit.registry import KNOWN_BACKEND_PACKAGES
    from lorakit.safetensors_header import read_header

    for path in paths:  # a broken or crafted header: its own line, before any backend reads it
        if path.lower().endswith(".safetensors") and Path(path).is_file():
            read_header(path)
        if Path(path).suffix.lower() in PICKLED_LORAS and Path(path).is_file():
            raise UsageError(
                f"{path}: a pickled file can run code when loaded; lorakit reads LoRAs saved "
                "as .safetensors (or PEFT adapter folders) only"
            )
    plugins = get_plugins()
    plugins.check()
    registries = plugins.registries
    spec: Any = None
    if name:
        spec = registries.backend_for(None, name).spec
    else:
        for entry in registries.backends:
            if paths and all(entry.spec.detect(Path(p)) for p in paths):
                spec = entry.spec
                break
        if spec is None:
            missing = [p for p in paths if not Path(p).exists()]
            if missing:
                raise UsageError(f"file not found: {missing[0]}")
            hint = ", ".join(f"{k} ({v})" for k, v in KNOWN_BACKEND_PACKAGES.items())
            raise UsageError(
                f"{verb}: cannot tell which backend reads {paths[0] if paths else 'this'}; pass --backend ({hint})"
            )
    if not spec.supports(verb):
        raise UsageError(f"backend {spec.name} does not support '{verb}'")
    return spec.name, spec


def trained_loras(cfg: Any) -> list[Path]:
    """The LoRA a finished run exported (from its run.json), for ``sample --config``."""
    from lorakit.plugins import get_registries
    from lorakit.runfolder import RECORD, RunFolder

    record = RunFolder(cfg.train.output_dir).try_json(RECORD)
    listed = record.get("outputs") if record is not None else None
    if not isinstance(listed, list):
        raise UsageError(f"no finished run in {cfg.train.output_dir}; pass --lora")
    outputs = [Path(str(p)) for p in listed]
    backend = get_registries().backends.get(cfg.backend)
    mine = backend.detect if backend.supports("detect") else lambda _: True
    found = [p for p in outputs if p.exists() and mine(p)]
    if not found:
        raise UsageError(f"the run in {cfg.train.output_dir} exported no LoRA; pass --lora")
    return found[:1]


def register(app: typer.Typer) -> None:
    for add in (_add_export, _add_merge, _add_sample):
        add(app)


def _add_export(app: typer.Typer) -> None:
    @app.command()
    def export(
        source: Annotated[Path, typer.Argument(help="A LoRA file to convert.")],
        to: Annotated[
            str,
            typer.Option("--to", help="Target format: kohya or diffusers (sd), gguf (llm)."),
        ],
        output: Annotated[Path | None, typer.Option("--output", "-o", help="Output file.")] = None,
        backend: Annotated[str | None, typer.Option("--backend")] = None,
        base: Annotated[
            str | None, typer.Option("--base", help="Base model, where a format needs it.")
        ] = None,
        config: ConfigOption = None,
        set_: SetOpt = None,
        base_config: BaseConfigOption = None,
        allow_unsafe_pickle: AllowPickleOpt = False,
    ) -> None:
        """Convert a trained LoRA: kohya/A1111 ⇄ diffusers (sd files), or a PEFT adapter to a
        llama.cpp GGUF adapter (llm: --to gguf, --base names the base where needed)."""
        name, commands = pick_backend(backend, [str(source)], "export")
        cfg = command_config(name, config, set_, base_config)
        base = base or (cfg.train.base_model if config is not None else None)
        for path in commands.export(source, to, output, base, cfg):
            print(f"wrote {path}")


def _add_merge(app: typer.Typer) -> None:
    @app.command()
    def merge(
        lora: Annotated[
            list[str], typer.Option("--lora", "--adapter", help="LoRA[:weight]; repeatable.")
        ],
        output: Annotated[Path, typer.Option("--output", "-o", help="Merged model to write.")],
        base: Annotated[
            str | None, typer.Option("--base", help="Base model file, folder or hub id.")
        ] = None,
        backend: Annotated[str | None, typer.Option("--backend")] = None,
        dtype: Annotated[
            str | None,
            typer.Option("--dtype", help="float32, float16 or bfloat16 (default: the base's)."),
        ] = None,
        config: ConfigOption = None,
        set_: SetOpt = None,
        base_config: BaseConfigOption = None,
        allow_unsafe_pickle: AllowPickleOpt = False,
    ) -> None:
        """Bake one or more LoRAs (with weights) into a base model and save it."""
        loras = [parse_lora(item) for item in lora]
        name, commands = pick_backend(backend, [p for p, _ in loras], "merge")
        cfg = command_config(name, config, set_, base_config)
        base = base or (cfg.train.base_model if config is not None else None)
        if not base:
            raise UsageError("merge: pass --base (or --config)")
        path = commands.merge(base, loras, output, dtype, cfg)
        print(f"wrote {path}")


def _add_sample(app: typer.Typer) -> None:
    @app.command()
    def sample(
        prompt: Annotated[
            list[str] | None, typer.Option("--prompt", "-p", help="Repeatable.")
        ] = None,
        base: Annotated[str | None, typer.Option("--base", help="Base model.")] = None,
        lora: Annotated[
            list[str] | None, typer.Option("--lora", "--adapter", help="LoRA[:weight]; repeatable.")
        ] = None,
        config: Annotated[
            Path | None,
            typer.Option("--config", "-c", help="Take base, prompts and LoRA from a run's config."),
        ] = None,
        output: Annotated[
            Path, typer.Option("--output", "-o", help="Folder for the results.")
        ] = Path("samples"),
        backend: Annotated[str | None, typer.Option("--backend")] = None,
        seed: Annotated[int, typer.Option("--seed")] = 42,
        steps: Annotated[
            int | None, typer.Option("--steps", help="Denoising steps (sd) / new tokens (llm).")
        ] = None,
        width: Annotated[
            int | None, typer.Option("--width", help="Image width (sd; default: the LoRA's).")
        ] = None,
        height: Annotated[
            int | None, typer.Option("--height", help="Image height (sd; default: the LoRA's).")
        ] = None,
        control: Annotated[
            list[str] | None,
            typer.Option(
                "--control",
                help="Edit models: the input image (a.png|b.png for several); once for every "
                "prompt or once per prompt; --set <backend>.sample_control.",
            ),
        ] = None,
        set_: SetOpt = None,
        base_config: BaseConfigOption = None,
        allow_unsafe_pickle: AllowPickleOpt = False,
    ) -> None:
        """Render images (sd) or generate text (llm) with one or several LoRAs."""
        cfg = None
        if config is not None:
            from lorakit.config import load_config

            cfg = load_config(config, check_paths=False)
            backend = backend or cfg.backend
            base = base or cfg.train.base_model
            prompt = prompt or cfg.train.sample_prompts
        loras = [parse_lora(item) for item in lora or []]
        if cfg is not None and not loras:
            loras = [(str(p), 1.0) for p in trained_loras(cfg)]
        if not base:
            raise UsageError("sample: pass --base (or --config)")
        if not prompt:
            raise UsageError("sample: pass --prompt (or a --config with sample_prompts)")
        name, commands = pick_backend(backend, [p for p, _ in loras], "sample")
        if control:
            set_ = [*(set_ or []), f"{name}.sample_control={json.dumps(control)}"]
        cfg = command_config(name, config, set_, base_config) or cfg
        for path in commands.sample(base, loras, prompt, output, seed, steps, cfg, width, height):
            print(f"wrote {path}")
