"""EMA of the trained weights (issue 27, item 2): the exported average follows the formula
written here from the raw weights a step hook saw, resume continues it bit for bit, the raw
weights are exported too, and previews can use the average."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import toy_config
from safetensors import safe_open
from safetensors.torch import load_file

import lorakit
from lorakit.config import load_config
from lorakit.engine import train
from lorakit.errors import UsageError

EMA = {"decay": 0.8, "update_every": 2, "start_step": 3}


def run(plugins, tmp_path, resume=None, **overrides):
    cfg = load_config(data=toy_config(tmp_path, **overrides), registries=plugins.registries)
    return train(cfg, plugins=plugins, resume=resume, progress=False)


def weights(folder, name="run"):
    return load_file(str(folder / f"{name}.lorakit.safetensors"))


class Recorder:
    """The raw LoRA tensors (the exporter's view) before the first step and after each."""

    def __init__(self) -> None:
        self.seen: list[dict[str, torch.Tensor]] = []

    @lorakit.hookimpl
    def on_train_start(self, run):
        self.seen.append({k: v.detach().clone() for k, v in run.backend.lora_state_dict().items()})

    @lorakit.hookimpl
    def on_step_end(self, run, step, metrics):
        assert step == len(self.seen)
        self.seen.append({k: v.detach().clone() for k, v in run.backend.lora_state_dict().items()})


def expected_ema(seen, decay, update_every, start_step):
    """ema_0 = w_0; ema_t = w_t while t <= start_step; then every update_every-th step
    ema_t = d * ema_{t-1} + (1 - d) * w_t, else ema_t = ema_{t-1} (in float64)."""
    ema = {k: v.double() for k, v in seen[0].items()}
    for t in range(1, len(seen)):
        w = {k: v.double() for k, v in seen[t].items()}
        if t <= start_step:
            ema = w
        elif (t - start_step) % update_every == 0:
            ema = {k: decay * ema[k] + (1 - decay) * w[k] for k in ema}
    return ema


def test_exported_ema_follows_the_formula_and_raw_weights_are_exported_too(toy_plugins, tmp_path):
    recorder = Recorder()
    toy_plugins.pm.register(recorder)
    try:
        result = run(toy_plugins, tmp_path, max_steps=12, ema=EMA)
    finally:
        toy_plugins.pm.unregister(recorder)
    assert len(recorder.seen) == 13
    ema, raw = weights(result.output_dir), weights(result.output_dir, "run-raw")
    want = expected_ema(recorder.seen, **EMA)
    assert set(ema) == set(raw) == set(want)
    for key, value in want.items():
        assert torch.equal(raw[key], recorder.seen[-1][key]), key
        torch.testing.assert_close(ema[key].double(), value, rtol=1e-6, atol=1e-7)
    # the average really lags the weights (a test that could not fail otherwise)
    assert max((ema[k] - raw[k]).abs().max().item() for k in ema) > 1e-3
    with safe_open(str(result.output_dir / "run.lorakit.safetensors"), "pt") as f:
        assert f.metadata()["lorakit.weights"] == "ema"
    with safe_open(str(result.output_dir / "run-raw.lorakit.safetensors"), "pt") as f:
        assert f.metadata()["lorakit.weights"] == "raw"
    assert {p.name for p in result.outputs} == {
        "run.lorakit.safetensors",
        "run-raw.lorakit.safetensors",
    }
    # the last checkpoint holds the average and both exports
    last = result.output_dir / "checkpoints" / "step-12"
    assert {"ema.safetensors", "run.lorakit.safetensors", "run-raw.lorakit.safetensors"} <= {
        p.name for p in last.iterdir()
    }
    assert not list(result.output_dir.glob(".raw-export.*"))


def test_start_step_and_update_every_one(toy_plugins, tmp_path):
    """start_step 0 and update_every 1: the plain average from the starting weights on."""
    recorder = Recorder()
    toy_plugins.pm.register(recorder)
    try:
        result = run(toy_plugins, tmp_path, max_steps=5, ema={"decay": 0.5})
    finally:
        toy_plugins.pm.unregister(recorder)
    want = expected_ema(recorder.seen, 0.5, 1, 0)
    got = weights(result.output_dir)
    for key, value in want.items():
        torch.testing.assert_close(got[key].double(), value, rtol=1e-6, atol=1e-7)


def test_resume_from_the_middle_checkpoint_with_ema_is_bit_identical(toy_plugins, tmp_path):
    settings = dict(
        max_steps=12,
        save_steps=4,
        batch_size=5,
        lr_scheduler="cosine",
        ema=EMA,
        train_data_dir=str(tmp_path),
    )
    whole = run(toy_plugins, tmp_path / "whole", **settings)
    middle = whole.output_dir / "checkpoints" / "step-4"
    assert (middle / "ema.safetensors").is_file()
    resumed = run(toy_plugins, tmp_path / "resumed", resume=str(middle), **settings)
    assert resumed.steps == whole.steps == 12
    for name in ("run", "run-raw"):
        a, b = weights(whole.output_dir, name), weights(resumed.output_dir, name)
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), (name, key)
    # where the average lives and what previews use may change on resume; the rest may not
    run(
        toy_plugins,
        tmp_path / "whole",
        resume=True,
        **{**settings, "max_steps": 13, "ema": {**EMA, "device": "cpu", "previews": True}},
    )
    with pytest.raises(UsageError, match="ema"):
        run(
            toy_plugins,
            tmp_path / "whole",
            resume=True,
            **{**settings, "max_steps": 14, "ema": {**EMA, "decay": 0.9}},
        )


class PreviewWeights:
    """Records the LoRA the model holds whenever the engine asks for previews."""

    def __init__(self) -> None:
        self.seen: list[dict[str, torch.Tensor]] = []

    def sample(self, backend, ctx, step, directory):
        self.seen.append({k: v.detach().clone() for k, v in backend.lora_state_dict().items()})
        return []


@pytest.mark.parametrize("previews", [True, False])
def test_previews_use_the_average_when_asked(toy_plugins, tmp_path, monkeypatch, previews):
    import toy_backend

    probe = PreviewWeights()
    monkeypatch.setattr(toy_backend.ToyBackend, "sample", lambda self, *a: probe.sample(self, *a))
    result = run(
        toy_plugins,
        tmp_path,
        max_steps=8,
        sample_prompts=["x"],
        sample_every_n_steps=3,
        ema={**EMA, "previews": previews},
    )
    assert len(probe.seen) == 3  # steps 3, 6 and the end
    final = weights(result.output_dir, "run" if previews else "run-raw")
    for key, value in final.items():
        assert torch.equal(probe.seen[-1][key], value), key
    # previews in the middle of the run leave the training exactly where it was
    plain = run(toy_plugins, tmp_path / "plain", max_steps=8, ema=EMA)
    for key, value in weights(plain.output_dir, "run-raw").items():
        assert torch.equal(weights(result.output_dir, "run-raw")[key], value), key


def test_ema_config(toy_plugins, tmp_path):
    from lorakit.config.schema import EmaConfig, TrainConfig
    from lorakit.engine.distributed import Strategy
    from lorakit.engine.ema import Ema, raw_name

    base = {"base_model": "toy/mlp", "train_data_dir": "."}
    assert TrainConfig(**base).ema is None
    assert TrainConfig(**base, ema=True).ema == EmaConfig()
    assert TrainConfig(**base, ema=False).ema is None
    with pytest.raises(ValueError, match="decay"):
        TrainConfig(**base, ema={"decay": 1.0})
    with pytest.raises(ValueError, match="device"):
        TrainConfig(**base, ema={"device": "tpu"})
    data = toy_config(tmp_path, ema=True, distributed={"strategy": "deepspeed_zero3"})
    config = load_config(data=data, registries=toy_plugins.registries)
    with pytest.raises(UsageError, match="deepspeed_zero3 shards them"):
        Ema.create(config, Strategy("deepspeed", None, None, 3))
    assert raw_name(Path("x/run-raw.safetensors"), "run") == "run-raw.safetensors"
    assert raw_name(Path("x/adapter"), "run") == "adapter-raw"
