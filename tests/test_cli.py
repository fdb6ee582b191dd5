"""The CLI: fast start, one-line errors with the right exit codes, config commands."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml

LORAKIT = [sys.executable, "-m", "lorakit.cli"]
HEAVY = ("torch", "diffusers", "transformers", "peft", "accelerate")


def lorakit(*args, env=None, cwd=None):
    return subprocess.run(
        [*LORAKIT, *args], capture_output=True, text=True, env=env or dict(os.environ), cwd=cwd
    )


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["-h"],
        ["plugins"],
        ["plugins", "--json"],
        ["config", "validate", "{config}"],
        ["version"],
    ],
)
def test_fast_commands_do_not_import_heavy_libraries(args, tmp_path, toy_env):
    config = tmp_path / "c.yaml"
    config.write_text(
        f"task_type: toy-regression\nbase_model: a/b\ntrain_data_dir: {tmp_path}\noutput_dir: {tmp_path}/o\n"
    )
    args = [a.replace("{config}", str(config)) for a in args]
    code = (
        "import sys\nfrom lorakit.cli import main\n"
        "try:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
        f"heavy = [m for m in {HEAVY!r} if m in sys.modules]\n"
        "print('HEAVY:' + ','.join(heavy), file=sys.stderr)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=toy_env
    )
    assert out.returncode == 0, out.stderr
    assert "HEAVY:\n" in out.stderr, (
        f"lorakit {' '.join(args)} imported: {out.stderr.splitlines()[-1]}"
    )


def test_config_error_is_one_line_exit_2(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text(
        f"task_type: image-generation\nbase_model: a/b\ntrain_data_dir: {tmp_path}\nlora_rnk: 4\n"
    )
    result = lorakit("train", "--config", str(config))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"{config}:4: lora_rnk: unknown key (did you mean 'lora_rank'?)" in lines[0]


def test_debug_shows_the_traceback(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("lora_rank: [\n")
    result = lorakit("config", "validate", str(config), env={**os.environ, "LORAKIT_DEBUG": "1"})
    assert result.returncode == 2 and "Traceback" in result.stderr


def test_missing_backend_names_the_package(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(f"task_type: text-generation\nbase_model: a/b\ntrain_data_dir: {tmp_path}\n")
    result = lorakit(
        "train", "--config", str(config), env={**os.environ, "LORAKIT_DISABLE_PLUGINS": "llm"}
    )
    assert result.returncode == 2
    assert "pip install lorakit-llm" in result.stderr and "Traceback" not in result.stderr
    result = lorakit(
        "train",
        "--config",
        str(config),
        "--backend",
        "llm",
        env={**os.environ, "LORAKIT_DISABLE_PLUGINS": "llm"},
    )
    assert result.returncode == 2 and "pip install lorakit-llm" in result.stderr


def test_usage_errors_exit_2():
    assert lorakit("train").returncode == 2
    assert lorakit("no-such-command").returncode == 2


def test_config_init_validate_and_set(tmp_path, toy_env):
    out = tmp_path / "base.yaml"
    assert lorakit("config", "init", "--output", str(out)).returncode == 0
    data = yaml.safe_load(out.read_text())
    assert data["lora_rank"] == 8
    again = lorakit("config", "init", "--output", str(out))
    assert again.returncode == 2 and "--force" in again.stderr
    (tmp_path / "data").mkdir()
    result = lorakit(
        "config",
        "validate",
        str(out),
        "--no-paths",
        "--set",
        "lora_rank=32",
        "--show",
        "--set",
        "task_type=toy-regression",
        cwd=tmp_path,
        env=toy_env,
    )
    assert result.returncode == 0, result.stderr
    assert "lora_rank: 32" in result.stdout and "ok (backend toy" in result.stdout


def test_config_init_distributed_template():
    result = lorakit("config", "init", "--distributed", "zero3")
    assert result.returncode == 0
    assert yaml.safe_load(result.stdout)["distributed"]["strategy"] == "deepspeed_zero3"


def test_config_migrate_rewrites_old_layout(tmp_path):
    path = tmp_path / "old.yaml"
    path.write_text(
        "config_version: 1\ntask_type: image\nnetwork_dim: 16\nresolution: 768\nbase_model: a/b\n"
    )
    result = lorakit("config", "migrate", str(path))
    assert result.returncode == 0, result.stderr
    assert "'network_dim' is now 'lora_rank'" in result.stdout
    data = yaml.safe_load(path.read_text())
    assert (
        data["lora_rank"] == 16 and data["sd"]["resolution"] == 768 and data["config_version"] == 2
    )
    assert (tmp_path / "old.yaml.bak").exists()


def test_train_through_the_cli(tmp_path, toy_env):
    config = tmp_path / "toy.yaml"
    config.write_text(
        f"task_type: toy-regression\nbase_model: toy/mlp\ntrain_data_dir: {tmp_path}\n"
        f"output_dir: {tmp_path}/run\nmax_steps: 4\nlearning_rate: 1e-2\n"
        "output_name: a-rather-long-adapter-name-that-a-80-column-console-would-wrap\n"
    )
    result = lorakit("train", "--config", str(config), "--set", "lora_rank=2", env=toy_env)
    assert result.returncode == 0, result.stderr
    assert "done: 4 steps" in result.stdout
    assert "step 4/4" in result.stdout  # plain progress lines when stdout is not a terminal
    written = tmp_path / "run" / "a-rather-long-adapter-name-that-a-80-column-console-would-wrap"
    assert written.with_suffix(".lorakit.safetensors").exists()
    # not a terminal: each path whole on its line, whatever the console width
    lines = [line.strip() for line in result.stdout.splitlines()]
    assert str(written.with_suffix(".lorakit.safetensors")) in lines
