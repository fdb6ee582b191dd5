"""The Wan templates, as ``lorakit config init`` writes them, train on tiny stand-ins.

Only the model, data and output paths, the resolution (32 px; the templates' 16-pixel bucket
step stays) and the step count are replaced: the templates' frame buckets, 16 fps, bf16
autocast, gradient checkpointing and 512 caption tokens run as written, on 20-frame clips
made here at 16 fps. diffusers judges the files: each loads through the stand-in's pipeline
(``load_into_transformer_2`` for the low-noise expert) with every trained module arriving.
"""

from __future__ import annotations

import json
import math

import pytest
import yaml
from PIL import Image
from sd_helpers import lora_keys
from video_helpers import moving_square, write_clip

from lorakit.testing import run_cli


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def _lora_count(module):
    return sum(1 for name, _ in module.named_modules() if name.endswith(".lora_A"))


@pytest.mark.parametrize("name", ["wan21-t2v", "wan22-i2v"])
def test_template_trains_as_written_and_diffusers_loads_its_files(
    name, tmp_path, capsys, sd_plugins
):
    from lorakit_sd.families.wan.standin import build_tiny_wan

    i2v = name == "wan22-i2v"
    model = build_tiny_wan(tmp_path / "model", experts=i2v, i2v=i2v)
    data = tmp_path / "data"
    write_clip(data / "walk.mp4", 20, fps=16)
    Image.fromarray(moving_square(1)).save(data / "still.png")
    (data / "metadata.csv").write_text(
        "file_name,text\nwalk.mp4,a red square walking\nstill.png,a red square\n"
    )
    written = tmp_path / f"{name}.yaml"
    code, _, err = run_cli(capsys, "config", "init", "-b", "sd", "-t", name, "-o", written)
    assert code == 0, err
    template = yaml.safe_load(written.read_text())
    config = {**template, "sd": {**template["sd"], "resolution": 32}}
    config.update(
        base_model=str(model.diffusers_dir),
        train_data_dir=str(data),
        output_dir=str(tmp_path / "out"),
        max_steps=2,
    )
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    code, out, err = run_cli(capsys, "train", "--config", path, "--no-progress")
    assert code == 0, out + err
    run = tmp_path / "out"
    ran = yaml.safe_load((run / "config.yaml").read_text())
    video = template["sd"]["video"]
    assert video["frames"] == [17, 33, 49, 81] and video["fps"] == 16
    assert all(ran["sd"]["video"][key] == value for key, value in video.items())
    assert ran["mixed_precision"] == "bf16" and ran["gradient_checkpointing"] is True
    losses = [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
    experts = ["_high_noise", "_low_noise"] if i2v else [""]
    assert sorted(p.name for p in run.glob("*.safetensors")) == sorted(
        f"out{e}{kind}" for e in experts for kind in (".safetensors", ".diffusers.safetensors")
    )
    pipe = model.load()
    for expert, transformer in zip(
        experts, [pipe.transformer, pipe.transformer_2 if i2v else None], strict=False
    ):
        file = run / f"out{expert}.diffusers.safetensors"
        keys, _ = lora_keys(file)
        pipe.load_lora_weights(str(file), load_into_transformer_2=expert == "_low_noise")
        assert _lora_count(transformer) == len([k for k in keys if k.endswith("lora_A.weight")]) > 0
