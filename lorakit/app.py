"""The API of applications built on lorakit (the local page, lorakit-ui): what they use
beyond the plugin API.

An application drives whole runs: it reads and validates configs and their templates,
checks a run folder's lock before starting or stopping a run, plans a run's memory, and lists
and checks a labeler's options for a form. Plugins never need these (they import
:mod:`lorakit.api` only; a test keeps them to it), so they live here, apart from the plugin
API, and may change with lorakit's minor versions.
Importing this module imports no torch.
"""

from __future__ import annotations

from lorakit.config.overrides import parse_override
from lorakit.config.schema import DistributedConfig, TrainConfig
from lorakit.config.templates import template_text
from lorakit.engine.runlock import earlier_run, has_checkpoints, holder, holds, in_use
from lorakit.labeling import describe_options, parse_options, read_metadata, validate_options
from lorakit.planning.gpus import local_card, parse_gpu
from lorakit.planning.plan import make_plan, plan_line

__all__ = [
    "DistributedConfig",
    "TrainConfig",
    "describe_options",
    "earlier_run",
    "has_checkpoints",
    "holder",
    "holds",
    "in_use",
    "local_card",
    "make_plan",
    "parse_gpu",
    "parse_options",
    "parse_override",
    "plan_line",
    "read_metadata",
    "template_text",
    "validate_options",
]
