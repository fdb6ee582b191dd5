"""The configs lorakit was specified from (``../shared/seed/``) run as written.

Every YAML there validates and trains with both backends installed, copied unchanged into a
folder that holds tiny stand-ins at exactly the paths it names: an SD1-layout single file whose
configs come from a local Hugging Face cache (as on a user's machine that ran diffusers once),
generated images with ``metadata.csv``, 150 QA rows as JSONL, a GGML header and the GGUF its
conversion hint names. The files are test inputs and never edited.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from lorakit.testing import run_cli

SEED = Path(__file__).resolve().parents[2] / "shared" / "seed"
SD1_REPO = "stable-diffusion-v1-5/stable-diffusion-v1-5"

pytestmark = pytest.mark.skipif(not SEED.is_dir(), reason=f"{SEED} is not beside this checkout")


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory):
    """The models the seed names, built once: the SD1 single file, a hub cache holding its
    configs, and a tiny Llama as a GGUF file."""
    from lorakit_llm.testing import build_tiny_llama, write_gguf
    from lorakit_sd.families.unet_standin import build_tiny_sd

    root = tmp_path_factory.mktemp("stand-ins")
    sd = build_tiny_sd(root / "sd", "sd1")
    snapshot = root / "hub" / f"models--{SD1_REPO.replace('/', '--')}" / "snapshots" / ("0" * 40)
    shutil.copytree(sd.config_dir, snapshot)
    # a 64-pixel model (what its pipeline generates at), so the seed's default bucket step fits
    unet_config = snapshot / "unet" / "config.json"
    unet_config.write_text(json.dumps({**json.loads(unet_config.read_text()), "sample_size": 32}))
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
    llama = build_tiny_llama(root / "llama")
    gguf = write_gguf(llama, root / "llama.gguf")
    return {"single_file": sd.single_file, "hub": root / "hub", "gguf": gguf}


@pytest.fixture
def seed_folder(tmp_path, stand_ins, monkeypatch):
    """A folder laid out as the seed's configs assume, with both backends installed and the
    hub cache in place; the working directory while the test runs."""
    import huggingface_hub.constants
    from lorakit_llm.testing import write_ggml_stub, write_qa_jsonl
    from lorakit_sd.testing import write_tiny_images

    from lorakit.plugins import get_registries, set_plugins

    set_plugins(None)
    assert {"sd", "llm"} <= set(get_registries().backends.names())
    for name in ("my_lora_config.yaml", "mascot.yaml", "medical.yaml"):
        shutil.copyfile(SEED / name, tmp_path / name)
    models = tmp_path / "models"
    (models / "Stable-diffusion").mkdir(parents=True)
    shutil.copyfile(
        stand_ins["single_file"], models / "Stable-diffusion" / "v1-5-pruned.safetensors"
    )
    write_ggml_stub(models / "llama-2-7b-chat.ggmlv3.q4_0.bin")
    write_tiny_images(tmp_path / "data" / "style_train", 4)
    write_tiny_images(tmp_path / "data" / "mascot", 80)
    (tmp_path / "data" / "llm_train").mkdir(parents=True)
    write_qa_jsonl(tmp_path / "data" / "llm_train" / "train.jsonl", 150)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(stand_ins["hub"]))
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    set_plugins(None)


def test_the_seed_files_are_the_ones_the_description_gives():
    assert (SEED / "my_lora_config.yaml").read_text(encoding="utf-8").startswith("# configs/")
    for name in ("my_lora_config.yaml", "mascot.yaml"):
        assert "task_type" not in (SEED / name).read_text(encoding="utf-8")


@pytest.mark.parametrize("name", ["my_lora_config.yaml", "mascot.yaml"])
def test_an_image_seed_config_validates_as_written_with_both_backends(seed_folder, capsys, name):
    code, out, err = run_cli(capsys, "config", "validate", name)
    assert code == 0, err
    assert "sd" in out


def test_the_style_seed_config_trains_as_written(seed_folder, capsys):
    before = (seed_folder / "my_lora_config.yaml").read_bytes()
    code, out, err = run_cli(capsys, "train", "--config", "my_lora_config.yaml")
    assert code == 0, err
    assert "backend sd: base_model is a single-file SD1.x checkpoint" in out + err
    run = seed_folder / "output" / "my_style_lora"
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert json.loads(lines[-1])["step"] == 10  # 4 images, batch 4, 10 epochs
    assert (run / "my_style_lora.safetensors").is_file()
    assert (seed_folder / "my_lora_config.yaml").read_bytes() == before


def test_the_mascot_seed_config_trains_as_written(seed_folder, capsys):
    code, out, err = run_cli(capsys, "train", "--config", "mascot.yaml")
    assert code == 0, err
    run = seed_folder / "output" / "mascot_v2"
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps[-1] == 300  # 80 images, batch 4, 15 epochs
    assert sorted(p.name for p in (run / "checkpoints").iterdir())[-1].startswith("step-")
    assert (run / "mascot_v2.safetensors").is_file()


def test_the_medical_seed_config_names_the_ggml_file_and_its_conversion(seed_folder, capsys):
    for verb in (("config", "validate", "medical.yaml"), ("train", "--config", "medical.yaml")):
        code, out, err = run_cli(capsys, *verb)
        assert code == 2, out + err
        lines = err.strip().splitlines()
        assert len(lines) == 1, err
        assert "old GGML" in lines[0] and "llama-2-7b-chat.ggmlv3.q4_0.bin" in lines[0]
        assert "convert_llama_ggml_to_gguf.py" in lines[0] and "llama-2-7b-chat.gguf" in lines[0]
        assert "Traceback" not in err


def test_the_medical_seed_config_trains_on_the_gguf_its_hint_names(seed_folder, capsys, stand_ins):
    shutil.copyfile(stand_ins["gguf"], seed_folder / "models" / "llama-2-7b-chat.gguf")
    code, out, err = run_cli(
        capsys,
        "train",
        "--config",
        "medical.yaml",
        "--set",
        "base_model=./models/llama-2-7b-chat.gguf",
    )
    assert code == 0, err
    run = seed_folder / "output" / "lora"
    assert (run / "adapter" / "adapter_config.json").is_file()


@pytest.mark.parametrize("base", ["someone/some-model", "models/empty"])
def test_an_ambiguous_config_is_one_line_asking_for_task_type(seed_folder, capsys, base):
    """A hub id (never looked up) or an empty folder, and an empty data folder: no backend
    can claim it, so the one line names the candidates and asks for task_type."""
    (seed_folder / "data" / "empty").mkdir()
    (seed_folder / "models" / "empty").mkdir()
    config = seed_folder / "ambiguous.yaml"
    config.write_text(f"base_model: {base}\ntrain_data_dir: data/empty\n")
    code, out, err = run_cli(capsys, "config", "validate", str(config))
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "cannot tell which backend runs this config" in err
    assert "set task_type to one of llm (text-generation), sd (image-generation)" in err
