"""Entry point of lorakit-sd: registrations only; nothing heavy is imported here.

Registers the ``sd`` backend (task type ``image-generation``) with its ``sd:`` config
section, templates and ``export`` / ``merge`` / ``sample`` / ``demo`` commands; the
image-folder dataset readers; the ``kohya`` and ``diffusers`` exporters; and the ``sd``
model loaders (single file, diffusers folder, hub id, opted-in pickle). Every factory
imports its module only when called, so ``lorakit --help`` never loads torch or diffusers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from lorakit.api import (
    Backend,
    BackendPlugin,
    Config,
    DataReport,
    DatasetReaderSpec,
    ExporterSpec,
    FileKind,
    FileProbe,
    ModelLoaderSpec,
    PlanModel,
    WeightedLora,
    hookimpl,
    lazy,
)
from lorakit_sd.config import SDSection
from lorakit_sd.families import builtin_labels, builtin_templates

LORAKIT_PLUGIN_API = 2
#: the hooks lorakit-sd publishes (``register_image_families``), added to lorakit's manager
LORAKIT_HOOKSPECS = "lorakit_sd.hookspecs"

#: Config layout 1 → 2: top-level keys that moved into ``sd:`` (old name → name there).
V1_MOVES = {
    "resolution": "resolution",
    "noise_offset": "noise_offset",
    "min_snr_gamma": "min_snr_gamma",
    "cache_latents": "cache_latents",
    "shuffle_caption": "shuffle_tags",
}


class SDBackend(BackendPlugin):
    """The ``sd`` backend: image-model LoRAs with diffusers and peft, one family per folder.

    Every method imports its module when called, so registering it is cheap."""

    name = "sd"
    task_types = ("image-generation",)
    description = f"{builtin_labels()} LoRA (diffusers + peft)"
    config_model = SDSection
    templates = builtin_templates()  # each family's folder holds its own
    aliases = {"metadata_path": "metadata_path"}
    migrations = {1: V1_MOVES}

    def template_files(self) -> Mapping[str, tuple[str, str]]:
        """Every installed family's template (lorakit-sd's own first): a family package's
        template is offered by ``lorakit config init --backend sd`` too."""
        from lorakit_sd import families

        found = {name: where for s in families.specs() for name, where in s.templates().items()}
        return {**self.templates, **found}

    def create(self, config: Config) -> Backend:
        from lorakit_sd.backend import create

        return create(config)

    def reads_model(self, base_model: str) -> str | None:
        from lorakit_sd.recognise import reads_model

        return reads_model(base_model)

    def reads_data(self, train_data_dir: str) -> str | None:
        from lorakit_sd.recognise import reads_data

        return reads_data(train_data_dir)

    def detect(self, path: Path) -> bool:
        """An SD LoRA file (kohya or diffusers keys), from its header only."""
        from lorakit.api import UsageError, read_safetensors_header
        from lorakit_sd.lorafiles.read import file_format

        path = Path(path)
        if not path.is_file() or path.suffix.lower() != ".safetensors":
            return False
        try:
            return file_format(read_safetensors_header(path).tensors) is not None
        except (UsageError, OSError):
            return False

    def identify(self, probe: FileProbe) -> FileKind | None:
        from lorakit_sd.lorafiles.read import identify

        return identify(probe)

    def plan(self, config: Config) -> PlanModel:
        from lorakit_sd.commands.plan import planner

        return planner(config)

    def inspect_data(self, config: Config, limit: int) -> DataReport:
        from lorakit.api import get_registries
        from lorakit_sd.data.inspect import inspect_images

        return inspect_images(config, get_registries(), limit)

    def export(
        self, source: Path, to: str, output: Path | None, base: str | None, config: Config | None
    ) -> list[Path]:
        from lorakit_sd.commands.export import export

        return export(source, to, output, base, config=config)

    def merge(
        self,
        base: str,
        loras: list[WeightedLora],
        output: Path,
        dtype: str | None,
        config: Config | None,
    ) -> Path:
        from lorakit_sd.commands.merge import merge

        return merge(base, loras, output, dtype, config=config)

    def sample(
        self,
        base: str,
        loras: list[WeightedLora],
        prompts: list[str],
        output: Path,
        seed: int,
        steps: int | None,
        config: Config | None,
        width: int | None,
        height: int | None,
    ) -> list[Path]:
        from lorakit_sd.commands.sample import sample

        return sample(
            base,
            loras,
            prompts,
            output,
            seed=seed,
            steps=steps,
            config=config,
            width=width,
            height=height,
        )

    def demo(self, folder: Path) -> Path:
        from lorakit_sd.commands.demo import demo_command

        return demo_command(folder)

    def selftest(self, output_dir: Path, config: Config) -> str:
        from lorakit_sd.commands.selftest import verify

        return verify(output_dir, config)


@hookimpl
def register_backends(register: Callable[[BackendPlugin], None]) -> None:
    register(SDBackend())


@hookimpl
def register_image_families(register: Callable[[Any], None]) -> None:
    """lorakit-sd's own image families (SPECs of its ``families/<name>/`` folders)."""
    from lorakit_sd.families import register_builtins

    register_builtins(register)


@hookimpl
def register_dataset_readers(register: Callable[[DatasetReaderSpec], None]) -> None:
    from lorakit_sd.data import readers as data

    register(
        DatasetReaderSpec(
            "metadata_csv",
            data.read_metadata_csv,
            "image folder + metadata.csv (file_name,text), as datasets' imagefolder",
            modality="image",
            detect=data.detect_csv,
        )
    )
    register(
        DatasetReaderSpec(
            "metadata_jsonl",
            data.read_metadata_jsonl,
            "image folder + metadata.jsonl ({file_name, text} per line)",
            modality="image",
            detect=data.detect_jsonl,
        )
    )
    register(
        DatasetReaderSpec(
            "caption_files",
            data.read_caption_files,
            "image folder with a .txt caption beside each image",
            modality="image",
            detect=data.detect_caption_files,
        )
    )


@hookimpl
def register_exporters(register: Callable[[ExporterSpec], None]) -> None:
    register(
        ExporterSpec(
            "kohya",
            lazy("lorakit_sd.lorafiles.exporters:export_kohya"),
            "<name>.safetensors for A1111 / ComfyUI / sd-scripts (ss_* + modelspec metadata)",
            backends=("sd",),
        )
    )
    register(
        ExporterSpec(
            "diffusers",
            lazy("lorakit_sd.lorafiles.exporters:export_diffusers"),
            "<name>.diffusers.safetensors for diffusers' load_lora_weights",
            backends=("sd",),
        )
    )


def _detect(name: str) -> Callable[[str], bool]:
    """A cheap detect function from lorakit_sd.models, imported when first called."""

    def detect(source: str) -> bool:
        from lorakit_sd import models

        return bool(getattr(models, name)(source))

    detect.__name__ = name
    return detect


@hookimpl
def register_model_loaders(register: Callable[[ModelLoaderSpec], None]) -> None:
    """How the ``sd`` backend, ``merge``, ``sample`` and ``export --base`` read base models.

    ``load(source, base_config=None, model_family="auto", allow_unsafe_pickle=False)``
    returns a ``lorakit_sd.models.BaseModel`` (a float32 diffusers pipeline, frozen, on the CPU).
    """
    loaders = (
        (
            "sd-pickle",
            "is_pickled_file",
            "load_pickled",
            30,
            "pickled .ckpt/.pt checkpoint: refused unless --allow-unsafe-pickle",
        ),
        (
            "sd-single-file",
            "is_single_file",
            "load_single_file",
            20,
            "single-file .safetensors in a family's original layout (LDM / SGM, BFL, MMDiT)",
        ),
        (
            "sd-diffusers",
            "is_folder",
            "load_folder",
            10,
            "diffusers pipeline folder (model_index.json)",
        ),
        (
            "sd-hub",
            "is_hub_id",
            "load_hub",
            0,
            "hub id (owner/name), from the local cache when HF_HUB_OFFLINE is set",
        ),
    )
    for name, detect_name, load_name, priority, description in loaders:
        check = lazy("lorakit_sd.models:check_single_file") if name == "sd-single-file" else None
        register(
            ModelLoaderSpec(
                name,
                "sd",
                _detect(detect_name),
                lazy(f"lorakit_sd.models:{load_name}"),
                description,
                priority=priority,
                check=check,
            )
        )
