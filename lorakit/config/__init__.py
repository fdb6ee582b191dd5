"""The training config: YAML in, a validated model out, errors that name key and line.

- :mod:`~lorakit.config.schema`: the core keys (``TrainConfig``) and the loaded ``Config``;
- :mod:`~lorakit.config.yaml_reader`: YAML with the line of every key;
- :mod:`~lorakit.config.overrides`: ``--set key=value``;
- :mod:`~lorakit.config.migrations`: older config versions brought up to date;
- :mod:`~lorakit.config.loader`: all of the above, then validation with did-you-mean;
- :mod:`~lorakit.config.reference`: the generated key reference.
"""

from lorakit.config.loader import load_config
from lorakit.config.overrides import apply_overrides, parse_override
from lorakit.config.schema import (
    CONFIG_VERSION,
    RESUMABLE_KEYS,
    Config,
    DistributedConfig,
    TrainConfig,
)
from lorakit.config.yaml_reader import read_yaml

__all__ = [
    "CONFIG_VERSION",
    "RESUMABLE_KEYS",
    "Config",
    "DistributedConfig",
    "TrainConfig",
    "apply_overrides",
    "load_config",
    "parse_override",
    "read_yaml",
]
