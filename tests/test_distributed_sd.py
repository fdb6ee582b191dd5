"""The sd backend under ddp, DeepSpeed ZeRO-2 and ZeRO-3 on two CPU processes (issue 22).

One launch per (family, strategy), shared by the module: 4 steps, latent and text caches
on, a checkpoint at step 2, a preview at the end. Every strategy is judged against the DDP
run of the same family at the same effective batch (2 per process × 2 processes): the
loss each step, both exported files (kohya and diffusers layouts) and the preview.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from distributed_helpers import (
    assert_partitioned,
    assert_whole,
    install_probe,
    rank_losses,
    read_jsonl,
    train,
    write_config,
)
from safetensors.torch import load_file

pytestmark = pytest.mark.slow

FAMILIES = ["sd1", "sdxl"]
SHARDED = ["deepspeed_zero2", "deepspeed_zero3"]
PROMPT = "a red disc on a shaded background"


class Runs:
    """The module's launches, each made once, on first use."""

    def __init__(self, root: Path) -> None:
        from lorakit_sd.families.unet_standin import build_tiny_sd
        from lorakit_sd.testing import write_tiny_images

        self.root = root
        self.env = install_probe(root / "site")
        self.models = {f: build_tiny_sd(root / "models" / f, f) for f in FAMILIES}
        self.data = write_tiny_images(root / "images", 4)
        self.done: dict[str, Path] = {}

    def config(self, name: str, family: str, strategy: str) -> Path:
        from lorakit_sd.testing import tiny_config

        data = tiny_config(
            self.models[family],
            self.data,
            self.root / name,
            max_steps=4,
            save_steps=2,
            lora_dropout=0.0,
            sample_prompts=[PROMPT],
            distributed={"strategy": strategy},
            sd={"cache_latents": True, "cache_text_encoder_outputs": True},
        )
        return write_config(self.root / f"{name}.yaml", data)

    def get(self, family: str, strategy: str) -> Path:
        name = f"{family}-{strategy}"
        if name not in self.done:
            if strategy.startswith("deepspeed"):
                pytest.importorskip("deepspeed")
            train(self.config(name, family, strategy), self.env, "--num-processes", "2")
            self.done[name] = self.root / name
        return self.done[name]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Runs:
    return Runs(tmp_path_factory.mktemp("sd-strategies"))


def exported(run: Path) -> dict[str, dict[str, torch.Tensor]]:
    return {
        layout: load_file(str(run / f"{run.name}{layout}"))
        for layout in (".safetensors", ".diffusers.safetensors")
    }


def assert_same_lora(ours: dict, ref: dict, **tol: float) -> None:
    assert ours.keys() == ref.keys()
    for layout in ref:
        a, b = ours[layout], ref[layout]
        assert {k: v.shape for k, v in a.items()} == {k: v.shape for k, v in b.items()}, layout
        for key in b:
            torch.testing.assert_close(a[key], b[key], **tol)


def preview(run: Path) -> torch.Tensor:
    import numpy as np
    from PIL import Image

    return torch.from_numpy(np.array(Image.open(run / "samples" / "step-000004-00.png")))


@pytest.mark.parametrize("strategy", SHARDED)
@pytest.mark.parametrize("family", FAMILIES)
def test_sd_backend_trains_exports_and_previews_like_ddp(runs, family, strategy):
    import json

    ddp, run = runs.get(family, "ddp"), runs.get(family, strategy)
    record = json.loads((run / "run.json").read_text())
    assert record["num_processes"] == 2 and record["strategy"] == strategy
    assert record["status"] == "finished"
    if strategy == "deepspeed_zero3":
        assert_partitioned(run)  # the UNet, frozen weights and LoRA, sliced across processes
    else:
        assert_whole(run)  # ZeRO-2 partitions only gradients and optimizer state
    assert_whole(ddp)

    # The rank-averaged loss of every step is DDP's, and both processes logged it.
    ours, ref = read_jsonl(run / "metrics.jsonl"), read_jsonl(ddp / "metrics.jsonl")
    assert [r["step"] for r in ours] == [1, 2, 3, 4]
    assert [r["loss"] for r in ours] == pytest.approx([r["loss"] for r in ref], rel=1e-4)
    losses = rank_losses(run)
    assert losses[0] == losses[1] == [r["loss"] for r in ours]

    # Whole tensors in both layouts (gathered from the slices), equal to DDP's; the LoRA
    # moved well away from its zero init, so the tolerance is a small part of what trained.
    files, reference = exported(run), exported(ddp)
    assert_same_lora(files, reference, rtol=1e-4, atol=1e-4)
    ups = [v for k, v in reference[".safetensors"].items() if k.endswith("lora_up.weight")]
    assert min(float(v.abs().max()) for v in ups) > 2e-3
    # The mid-run checkpoint holds the whole exports too.
    middle = exported_checkpoint(run, 2)
    assert_same_lora(middle, exported_checkpoint(ddp, 2), rtol=1e-4, atol=1e-4)

    # The preview rendered with the partitioned UNet (every process in step) is DDP's.
    a, b = preview(run).int(), preview(ddp).int()
    assert a.shape == b.shape and (a - b).abs().max() <= 1
    assert sorted(p.name for p in (run / "samples").iterdir()) == [
        "step-000004-00.png",
        "step-000004.png",
    ]


def exported_checkpoint(run: Path, step: int) -> dict[str, dict[str, torch.Tensor]]:
    folder = run / "checkpoints" / f"step-{step}"
    return {
        layout: load_file(str(folder / f"{run.name}{layout}"))
        for layout in (".safetensors", ".diffusers.safetensors")
    }


def test_sd_backend_resumes_under_zero3_like_the_uninterrupted_run(runs):
    """From the middle checkpoint (step 2) of the ZeRO-3 run, into a new folder."""
    whole = runs.get("sd1", "deepspeed_zero3")
    path = runs.config("resumed", "sd1", "deepspeed_zero3")
    train(path, runs.env, "--num-processes", "2", "--resume", str(whole / "checkpoints/step-2"))
    again = runs.root / "resumed"
    assert_partitioned(again)
    a = load_file(str(again / "resumed.safetensors"))
    b = load_file(str(whole / f"{whole.name}.safetensors"))
    assert a.keys() == b.keys()
    for key in b:
        torch.testing.assert_close(a[key], b[key], rtol=1e-6, atol=1e-7)
    tail = read_jsonl(again / "metrics.jsonl")
    assert [r["step"] for r in tail] == [3, 4]
    assert [r["loss"] for r in tail] == [r["loss"] for r in read_jsonl(whole / "metrics.jsonl")[2:]]
