"""The public API for plugins: everything a plugin package may import from lorakit.

A plugin imports from here and nowhere else in lorakit (a test keeps lorakit's own plugin
packages to it)::

    from lorakit.api import Backend, BackendPlugin, LossOutput, hookimpl, lazy

Importing this module imports no torch, diffusers, transformers, peft or accelerate:
plugin modules stay cheap to load, and ``lorakit --help`` stays fast.
"""

from __future__ import annotations

from lorakit import PLUGIN_API_VERSION, __version__, hookimpl
from lorakit.backend import (
    Backend,
    LossOutput,
    TrainContext,
    half_dtype,
    trainable_state_dict,
)
from lorakit.backend_plugin import BackendPlugin, Chat, WeightedLora
from lorakit.clips import VIDEO_EXTENSIONS, is_clip_name
from lorakit.config.loader import load_config
from lorakit.config.schema import Config
from lorakit.data_report import DataReport, DataRow
from lorakit.env import env_flag
from lorakit.errors import ConfigError, DataError, LorakitError, PluginError, RunError, UsageError
from lorakit.export_view import AdapterExport, AdapterLayer, Exporter, Network
from lorakit.gguf_header import check_gguf
from lorakit.hookspecs import RunInfo, hookspec
from lorakit.identify import FileKind, FileProbe, LoraSummary
from lorakit.images import IMAGE_EXTENSIONS, decode_rgb, is_image_name
from lorakit.images import check_pixels as check_image_pixels
from lorakit.io import (
    atomic_dir,
    atomic_path,
    parse_lora,
    save_safetensors,
    write_bytes,
    write_text,
)
from lorakit.labeling import (
    METADATA_NAME,
    Labeler,
    create_labeler,
    find_images,
    format_metadata,
    label_folder,
    make_caption,
)
from lorakit.metadata_csv import (
    CONTROL_COLUMNS,
    CONTROL_SEPARATOR,
    FILE_COLUMNS,
    TEXT_COLUMNS,
    read_table,
    read_text,
    split_control,
)
from lorakit.planning.estimate import PlanModel
from lorakit.plugins import PluginInfo, get_registries, lazy, plugin_registrations
from lorakit.registry import (
    DatasetReaderSpec,
    ExporterSpec,
    LabelerSpec,
    ModelLoaderSpec,
    OptimizerSpec,
    RewardSpec,
    SchedulerSpec,
    TrackerSpec,
)
from lorakit.runfolder import RunFolder
from lorakit.safetensors_header import read_header as read_safetensors_header
from lorakit.terminal_text import printable
from lorakit.unsafe_pickle import HINT as UNSAFE_PICKLE_HINT
from lorakit.unsafe_pickle import unsafe_pickle_allowed
from lorakit.zero import gathered_parameters, loading_whole

__all__ = [
    "AdapterExport",
    "AdapterLayer",
    "Exporter",
    "Network",
    "CONTROL_COLUMNS",
    "CONTROL_SEPARATOR",
    "FILE_COLUMNS",
    "IMAGE_EXTENSIONS",
    "VIDEO_EXTENSIONS",
    "METADATA_NAME",
    "PLUGIN_API_VERSION",
    "Backend",
    "BackendPlugin",
    "Chat",
    "Config",
    "ConfigError",
    "DataError",
    "DataReport",
    "DataRow",
    "DatasetReaderSpec",
    "ExporterSpec",
    "FileKind",
    "FileProbe",
    "Labeler",
    "LabelerSpec",
    "LorakitError",
    "LoraSummary",
    "LossOutput",
    "ModelLoaderSpec",
    "OptimizerSpec",
    "PlanModel",
    "PluginError",
    "PluginInfo",
    "RewardSpec",
    "RunError",
    "RunInfo",
    "RunFolder",
    "SchedulerSpec",
    "TEXT_COLUMNS",
    "TrackerSpec",
    "TrainContext",
    "UNSAFE_PICKLE_HINT",
    "UsageError",
    "WeightedLora",
    "__version__",
    "atomic_dir",
    "atomic_path",
    "check_image_pixels",
    "check_gguf",
    "create_labeler",
    "decode_rgb",
    "env_flag",
    "find_images",
    "format_metadata",
    "gathered_parameters",
    "get_registries",
    "half_dtype",
    "hookimpl",
    "hookspec",
    "is_image_name",
    "is_clip_name",
    "label_folder",
    "lazy",
    "load_config",
    "loading_whole",
    "make_caption",
    "parse_lora",
    "plugin_registrations",
    "printable",
    "read_table",
    "read_text",
    "read_safetensors_header",
    "save_safetensors",
    "split_control",
    "trainable_state_dict",
    "unsafe_pickle_allowed",
    "write_bytes",
    "write_text",
]
