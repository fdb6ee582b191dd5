"""Config layout versions: old keys migrate with a notice each; files are rewritten in place."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from conftest import toy_config

from lorakit.backend_plugin import BackendPlugin
from lorakit.config import CONFIG_VERSION, load_config
from lorakit.config.migrations import MIGRATIONS, migrate, migrate_text
from lorakit.config.yaml_reader import parse_yaml
from lorakit.errors import ConfigError
from lorakit.testing import run_cli, write_config

OLD = """\
# mascot run, written for the old layout
config_version: 1   # layout
task_type: image-generation
base_model: ./models/v1-5.safetensors   # the base

network_dim: 16     # rank
network_alpha: 8
train_batch_size: 2
# training resolution
resolution: 512
shuffle_caption: true
learning_rate: 2e-4
sd:
  cache_text_encoder: true   # kept
optimizer_args:
  weight_decay: 0.01
"""


#: A backend that moved top-level keys into its section between layouts 1 and 2, as lorakit-sd did.
class SDLike(BackendPlugin):
    name, task_types = "sd", ("image-generation",)
    migrations = {
        1: {
            "resolution": "resolution",
            "noise_offset": "noise_offset",
            "shuffle_caption": "shuffle_tags",
        }
    }


SD = SDLike()


def test_every_old_version_has_a_migration():
    assert set(MIGRATIONS) == set(range(1, CONFIG_VERSION))


def test_v1_keys_are_renamed_and_moved_with_notices():
    data = yaml.safe_load(OLD)
    before = copy.deepcopy(data)
    new, notices = migrate(data, file="old.yaml", backend=SD)
    assert data == before  # the caller's dict (and its sd section) is untouched
    assert new["config_version"] == CONFIG_VERSION
    assert (new["lora_rank"], new["lora_alpha"], new["batch_size"]) == (16, 8, 2)
    assert new["sd"] == {"cache_text_encoder": True, "resolution": 512, "shuffle_tags": True}
    assert not {"network_dim", "resolution", "shuffle_caption"} & set(new)
    assert notices == [
        "config_version 1→2: 'network_dim' is now 'lora_rank'",
        "config_version 1→2: 'network_alpha' is now 'lora_alpha'",
        "config_version 1→2: 'train_batch_size' is now 'batch_size'",
        "config_version 1→2: 'resolution' moved to 'sd.resolution'",
        "config_version 1→2: 'shuffle_caption' moved to 'sd.shuffle_tags'",
    ]


def test_current_layout_has_no_notices():
    new, notices = migrate({"lora_rank": 4})
    assert notices == [] and new == {"lora_rank": 4, "config_version": CONFIG_VERSION}


def test_missing_version_with_old_keys_is_read_as_v1():
    new, notices = migrate({"network_dim": 4, "base_model": "x"})
    assert new["lora_rank"] == 4
    assert notices[0] == "no config_version; read as version 1 (it uses 'network_dim')"
    # a key the backend moved counts as old too; the core alone does not know it
    assert migrate({"resolution": 512}, backend=SD)[0]["sd"] == {"resolution": 512}
    assert migrate({"resolution": 512})[1] == []


def test_empty_sd_section_takes_moved_keys():
    new, _ = migrate({"config_version": 1, "resolution": 768, "sd": None}, backend=SD)
    assert new["sd"] == {"resolution": 768}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"config_version": 1, "network_dim": 4, "lora_rank": 8}, "both 'network_dim'"),
        ({"config_version": 1, "resolution": 512, "sd": {"resolution": 768}}, "'sd.resolution'"),
        ({"config_version": 1, "resolution": 512, "sd": [1]}, "not a mapping"),
        ({"config_version": True}, "whole number"),
        ({"config_version": "2"}, "whole number"),
        ({"config_version": 0}, "unsupported version 0"),
        ({"config_version": CONFIG_VERSION + 1}, "written by a newer lorakit"),
    ],
)
def test_bad_versions_and_conflicts(data, message):
    with pytest.raises(ConfigError) as caught:
        migrate(data, file="run.yaml", backend=SD)
    assert message in str(caught.value) and "run.yaml" in str(caught.value)


def test_text_rewrite_keeps_the_order_and_says_where_the_comments_are():
    text, notices = migrate_text(OLD, file="runs/old.yaml", backend=SD)
    assert text is not None and len(notices) == 6
    assert parse_yaml(text)[0] == migrate(parse_yaml(OLD)[0], backend=SD)[0]
    assert text.splitlines()[:2] == [
        f"# Migrated to config_version {CONFIG_VERSION} by `lorakit config migrate`; the comments of the",
        "# original are in old.yaml.bak.",
    ]
    keys = [line.split(":")[0] for line in text.splitlines() if line and line[0].isalpha()]
    assert keys == [
        "config_version",
        "task_type",
        "base_model",
        "lora_rank",
        "lora_alpha",
        "batch_size",
        "learning_rate",
        "sd",
        "optimizer_args",
    ]
    assert notices[-1] == "comments are not kept in the rewritten file (the original is the .bak)"
    assert migrate_text(text, backend=SD) == (None, [])  # already current


def test_version_1_without_old_keys_is_bumped():
    text, notices = migrate_text("config_version: 1\nlora_rank: 4\n")
    assert text is not None and yaml.safe_load(text) == {
        "config_version": CONFIG_VERSION,
        "lora_rank": 4,
    }
    assert notices[0] == f"config_version 1→{CONFIG_VERSION}: no key changed"


def test_load_config_migrates_with_notices(toy_plugins, tmp_path):
    data = toy_config(tmp_path)
    data["network_dim"] = data.pop("lora_rank")
    data["train_batch_size"] = data.pop("batch_size")
    data["config_version"] = 1
    config = load_config(write_config(tmp_path / "old.yaml", data))
    assert config.train.lora_rank == 4 and config.train.batch_size == 8
    assert config.notices == [
        "config_version 1→2: 'network_dim' is now 'lora_rank'",
        "config_version 1→2: 'train_batch_size' is now 'batch_size'",
    ]


def test_config_migrate_command(toy_plugins, tmp_path: Path, capsys):
    data = toy_config(tmp_path)
    data["network_dim"] = data.pop("lora_rank")
    path = tmp_path / "old.yaml"
    original = yaml.safe_dump(data)
    path.write_text(original)
    code, out, _ = run_cli(capsys, "config", "migrate", path)
    assert code == 0
    assert "'network_dim' is now 'lora_rank'" in out and "wrote" in out
    assert (tmp_path / "old.yaml.bak").read_text() == original
    assert load_config(path).train.lora_rank == 4
    code, out, _ = run_cli(capsys, "config", "migrate", path)
    assert code == 0 and "already current" in out
