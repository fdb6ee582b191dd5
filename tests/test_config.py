"""Config: the seed-style file validates; every malformed one gives a one-line error."""

from __future__ import annotations

import textwrap

import pytest

from lorakit.config import load_config, parse_override
from lorakit.errors import ConfigError

SEED = """\
task_type: toy-regression
base_model: {base}
train_data_dir: {data}
metadata_path: {data}/metadata.csv
lora_rank: 8
batch_size: 4
epochs: 10
learning_rate: 2e-4
output_dir: {out}
save_steps: 100
"""


@pytest.fixture
def files(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "metadata.csv").write_text("file_name,text\n")
    base = tmp_path / "v1-5-pruned.safetensors"
    base.write_bytes(b"")
    return {"base": base, "data": data, "out": tmp_path / "out"}


def write(tmp_path, text, files):
    path = tmp_path / "run.yaml"
    path.write_text(textwrap.dedent(text).format(**files))
    return path


def test_seed_style_config_validates_as_written(toy_plugins, tmp_path, files):
    cfg = load_config(write(tmp_path, SEED, files))
    assert cfg.backend == "toy"
    assert cfg.train.learning_rate == pytest.approx(2e-4)  # YAML 1.1 reads 2e-4 as a string
    assert cfg.train.lora_rank == 8 and cfg.train.alpha == 8.0
    assert cfg.train.save_steps == 100
    assert cfg.train.name == "out"
    assert cfg.section is not None and cfg.section.samples == 64


def test_overrides_and_backend_sections(toy_plugins, tmp_path, files):
    path = write(tmp_path, SEED + "toy:\n  samples: 16\n", files)
    cfg = load_config(path, overrides=["lora_rank=16", "toy.dim=8", "learning_rate=1e-3"])
    assert cfg.train.lora_rank == 16 and cfg.section.dim == 8 and cfg.section.samples == 16
    assert cfg.train.learning_rate == pytest.approx(1e-3)
    assert parse_override("target_modules=[to_q, to_v]") == (["target_modules"], ["to_q", "to_v"])


def test_resolved_config_round_trips(toy_plugins, tmp_path, files):
    cfg = load_config(write(tmp_path, SEED, files))
    again_path = tmp_path / "resolved.yaml"
    again_path.write_text(cfg.to_yaml())
    again = load_config(again_path)
    assert again.to_dict() == cfg.to_dict()
    assert again.semantic_hash() == cfg.semantic_hash()


def test_harmless_keys_do_not_change_the_hash(toy_plugins, tmp_path, files):
    path = write(tmp_path, SEED, files)
    base = load_config(path).semantic_hash()
    assert load_config(path, overrides=["max_steps=5", "save_steps=7"]).semantic_hash() == base
    assert load_config(path, overrides=["lora_rank=4"]).semantic_hash() != base


# (description, extra YAML or replacement, expected fragments of the message, expected line)
BAD = [
    (
        "typo",
        SEED + "learning_rat: 1e-4\n",
        ["learning_rat: unknown key", "did you mean 'learning_rate'"],
        11,
    ),
    ("unknown", SEED + "frobnicate: 3\n", ["frobnicate: unknown key"], 11),
    (
        "wrong type",
        SEED.replace("batch_size: 4", "batch_size: four"),
        ["batch_size:", "valid integer"],
        6,
    ),
    (
        "zero rank",
        SEED.replace("lora_rank: 8", "lora_rank: 0"),
        ["lora_rank:", "greater than 0"],
        5,
    ),
    ("negative lr", SEED.replace("2e-4", "-2e-4"), ["learning_rate:", "greater than 0"], 8),
    ("zero batch", SEED.replace("batch_size: 4", "batch_size: 0"), ["batch_size:"], 6),
    (
        "missing base",
        SEED.replace("base_model: {base}\n", ""),
        ["base_model: required key is missing"],
        None,
    ),
    (
        "base not found",
        SEED.replace("base_model: {base}", "base_model: ./nope.safetensors"),
        ["base_model: file or folder not found"],
        2,
    ),
    (
        "data not found",
        SEED.replace("train_data_dir: {data}", "train_data_dir: /nonexistent/x"),
        ["train_data_dir: folder not found"],
        3,
    ),
    (
        "metadata not found",
        SEED.replace("{data}/metadata.csv", "{data}/nope.csv"),
        ["metadata_path: file not found"],
        4,
    ),
    ("bad yaml", SEED + "lora_alpha: [1, 2\n", ["invalid YAML"], 12),
    ("not a mapping", "- a\n- b\n", ["must be a mapping"], 1),
    ("duplicate key", SEED + "lora_rank: 4\n", ["lora_rank: duplicate key"], 11),
    (
        "section typo",
        SEED + "toy:\n  sampels: 3\n",
        ["toy.sampels: unknown key", "did you mean 'samples'"],
        12,
    ),
    ("section type", SEED + "toy:\n  samples: many\n", ["toy.samples:"], 12),
    (
        "bad task",
        SEED.replace("toy-regression", "video-generation"),
        ["task_type: unknown task_type"],
        1,
    ),
    (
        "missing backend",
        SEED.replace("toy-regression", "text-generation"),
        ["pip install lorakit-llm"],
        1,
    ),
    ("bad precision", SEED + "mixed_precision: fp8\n", ["mixed_precision:"], 11),
    ("dropout range", SEED + "lora_dropout: 1.5\n", ["lora_dropout:", "less than 1"], 11),
    ("bad strategy", SEED + "distributed:\n  strategy: horovod\n", ["distributed.strategy:"], 12),
    ("future version", "config_version: 99\n" + SEED, ["config_version", "unsupported"], None),
]


@pytest.mark.parametrize("name,text,fragments,line", BAD, ids=[b[0] for b in BAD])
def test_malformed_configs_give_one_line_errors(
    toy_plugins, tmp_path, files, name, text, fragments, line
):
    path = write(tmp_path, text, files)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(str(path)), message
    for fragment in fragments:
        assert fragment in message, message
    if line is not None:
        assert info.value.line == line, message


def test_section_of_a_missing_backend_names_the_package(toy_plugins, tmp_path, files):
    path = write(tmp_path, SEED + "llm:\n  max_seq_len: 512\n", files)
    with pytest.raises(ConfigError, match="pip install lorakit-llm"):
        load_config(path)


def test_hub_ids_are_not_checked_as_paths(toy_plugins, tmp_path, files):
    path = write(
        tmp_path,
        SEED.replace("base_model: {base}", "base_model: runwayml/stable-diffusion-v1-5"),
        files,
    )
    assert load_config(path).train.base_model == "runwayml/stable-diffusion-v1-5"


def test_migration_from_v1_layout(toy_plugins, tmp_path, files):
    text = SEED.replace("lora_rank: 8", "network_dim: 8").replace(
        "batch_size: 4", "train_batch_size: 4"
    )
    cfg = load_config(write(tmp_path, "config_version: 1\n" + text, files))
    assert cfg.train.lora_rank == 8 and cfg.train.batch_size == 4
    assert any("'network_dim' is now 'lora_rank'" in n for n in cfg.notices)


def test_a_bad_override_names_the_set_item_not_the_file_line(toy_plugins, tmp_path, files):
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, SEED, files), overrides=["lora_rank=-1"])
    assert str(info.value).startswith("--set lora_rank=-1: lora_rank: input should be greater")


def test_set_into_an_empty_section(toy_plugins, tmp_path, files):
    cfg = load_config(write(tmp_path, SEED + "toy:\n", files), overrides=["toy.dim=8"])
    assert cfg.section.dim == 8


def test_yaml_merge_keys(toy_plugins, tmp_path, files):
    text = SEED + "toy:\n  <<: {{samples: 16, dim: 4}}\n  dim: 8\n"
    cfg = load_config(write(tmp_path, text, files))
    assert (cfg.section.samples, cfg.section.dim) == (16, 8)


def test_backend_preview_keys_may_change_on_resume(toy_plugins, tmp_path, files):
    path = write(tmp_path, SEED, files)
    base = load_config(path)
    assert load_config(path, overrides=["toy.samples=64"]).semantic_hash() == base.semantic_hash()
    assert load_config(path, overrides=["toy.samples=65"]).semantic_hash() != base.semantic_hash()


def test_task_type_defaults_to_the_only_backend_and_is_asked_for_when_none_claims(
    toy_plugins, tmp_path, files
):
    from lorakit.backend_plugin import BackendPlugin

    class Other(BackendPlugin):
        name, task_types = "other", ("other-generation",)

    without = SEED.replace("task_type: toy-regression\n", "")
    cfg = load_config(write(tmp_path, without, files))
    assert cfg.backend == "toy" and cfg.train.task_type == "toy-regression"
    assert cfg.chosen_by is None  # the only backend: nothing to explain
    registries = toy_plugins.registries
    registries.backends.add(Other(), plugin="o", distribution="o", version="1")
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, without, files), registries=registries)
    message = str(info.value)
    assert "cannot tell which backend runs this config" in message
    assert "set task_type to one of other (other-generation), toy (toy-regression)" in message


def test_without_task_type_the_backend_that_reads_the_model_runs_it(toy_plugins, tmp_path, files):
    from lorakit.backend_plugin import BackendPlugin

    class Other(BackendPlugin):
        name, task_types = "other", ("other-generation",)

        def reads_model(self, base_model: str) -> str | None:
            return "an other model" if base_model.endswith(".other") else None

        def reads_data(self, train_data_dir: str) -> str | None:
            return "other rows"

    registries = toy_plugins.registries
    registries.backends.add(Other(), plugin="o", distribution="o", version="1")
    (tmp_path / "m.other").write_text("x")
    without = SEED.replace("task_type: toy-regression\n", "").replace(
        "metadata_path: {data}/metadata.csv\n", ""
    )
    path = write(tmp_path, without, files)
    cfg = load_config(path, overrides=[f"base_model={tmp_path / 'm.other'}"], registries=registries)
    assert cfg.backend == "other" and cfg.train.task_type == "other-generation"
    assert cfg.chosen_by == "backend other: base_model is an other model"
    # no model claims: the data decides (only Other reads it)
    cfg = load_config(path, registries=registries)
    assert cfg.backend == "other" and cfg.chosen_by == "backend other: train_data_dir is other rows"
