"""The engine on the toy backend: learning, accumulation, resume, trackers, memory."""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch
from conftest import toy_config
from safetensors.torch import load_file

import lorakit
from lorakit.builtins.trackers import read_metrics
from lorakit.config import load_config
from lorakit.engine import train
from lorakit.errors import UsageError


def run(plugins, tmp_path, resume=None, **overrides):
    cfg = load_config(data=toy_config(tmp_path, **overrides), registries=plugins.registries)
    return train(cfg, plugins=plugins, resume=resume, progress=False)


def lora(result):
    return load_file(str(result.output_dir / "run.lorakit.safetensors"))


def test_loss_falls_and_outputs_exist(toy_plugins, tmp_path):
    result = run(toy_plugins, tmp_path, epochs=6)
    rows = read_metrics(result.output_dir)
    assert len(rows) == result.steps == 48
    first = sum(r["loss"] for r in rows[:8]) / 8
    last = sum(r["loss"] for r in rows[-8:]) / 8
    assert last < 0.6 * first
    assert {"step", "epoch", "loss", "lr", "samples_per_s", "elapsed_s"} <= set(rows[0])
    record = json.loads((result.output_dir / "run.json").read_text())
    assert record["status"] == "finished" and record["steps"] == 48
    assert (
        record["libraries"]["torch"] == torch.__version__.split("+")[0]
        or record["libraries"]["torch"]
    )
    assert (result.output_dir / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert (result.output_dir / "config.yaml").exists()
    weights = lora(result)
    assert weights and all("lora_" in k for k in weights)


def test_loss_png_does_not_need_the_jsonl_tracker(toy_plugins, tmp_path):
    from PIL import Image

    result = run(toy_plugins, tmp_path, max_steps=3, trackers=["tensorboard"])
    assert not (result.output_dir / "metrics.jsonl").exists()
    with Image.open(result.output_dir / "loss.png") as image:  # a PNG that PIL decodes
        image.load()
        assert image.format == "PNG" and image.size == (700, 400)


def test_accelerate_keeps_the_sync_flag_setter():
    """engine/step.py sets accelerate's private gradient_state sync flag under DeepSpeed; if
    accelerate renames or drops it, this fails before a DeepSpeed run silently mis-syncs."""
    from accelerate.state import GradientState

    state = GradientState()
    for flag in (False, True):
        state._set_sync_gradients(flag)
        assert state.sync_gradients is flag


def test_accumulation_matches_bigger_batch(toy_plugins, tmp_path):
    a = run(toy_plugins, tmp_path / "a", batch_size=8, gradient_accumulation_steps=1, max_steps=6)
    b = run(toy_plugins, tmp_path / "b", batch_size=4, gradient_accumulation_steps=2, max_steps=6)
    wa, wb = lora(a), lora(b)
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], rtol=1e-5, atol=1e-6)
    la = [r["loss"] for r in read_metrics(a.output_dir)]
    lb = [r["loss"] for r in read_metrics(b.output_dir)]
    assert la == pytest.approx(lb, rel=1e-5)


class InterruptAt:
    """A plugin that presses Ctrl-C after a given step."""

    def __init__(self, step: int, sig: int = signal.SIGINT) -> None:
        self.step = step
        self.sig = sig

    @lorakit.hookimpl
    def on_step_end(self, run, step, metrics):
        if step == self.step:
            os.kill(os.getpid(), self.sig)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_then_resume_is_bit_identical(toy_plugins, tmp_path, sig):
    settings = dict(epochs=3, batch_size=5, lr_scheduler="cosine", lr_warmup_steps=3, save_steps=4)
    whole = run(toy_plugins, tmp_path / "whole", **settings)

    interrupter = InterruptAt(7, sig)
    toy_plugins.pm.register(interrupter)
    first = run(toy_plugins, tmp_path / "split", **settings)
    toy_plugins.pm.unregister(interrupter)
    assert first.interrupted and first.steps == 7
    assert (first.output_dir / "checkpoints" / "step-7" / "trainer_state.json").exists()
    assert json.loads((first.output_dir / "run.json").read_text())["status"] == "interrupted"

    resumed = run(toy_plugins, tmp_path / "split", resume=True, **settings)
    assert resumed.steps == whole.steps == 39  # ceil(64 / 5) * 3
    for key, value in lora(whole).items():
        assert torch.equal(value, lora(resumed)[key]), key
    strip = [
        {k: r[k] for k in ("step", "loss", "lr", "epoch")} for r in read_metrics(whole.output_dir)
    ]
    again = [
        {k: r[k] for k in ("step", "loss", "lr", "epoch")} for r in read_metrics(resumed.output_dir)
    ]
    assert strip == again


def test_resume_refuses_changed_semantics_allows_harmless(toy_plugins, tmp_path):
    run(toy_plugins, tmp_path, max_steps=4, save_steps=2)
    with pytest.raises(UsageError, match="lora_rank"):
        run(toy_plugins, tmp_path, resume=True, max_steps=8, lora_rank=8)
    result = run(toy_plugins, tmp_path, resume=True, max_steps=8, save_steps=3)
    assert result.steps == 8


def test_resume_without_checkpoint_is_a_usage_error(toy_plugins, tmp_path):
    with pytest.raises(UsageError, match="no checkpoint"):
        run(toy_plugins, tmp_path, resume=True)


def test_save_total_limit_prunes(toy_plugins, tmp_path):
    result = run(toy_plugins, tmp_path, max_steps=10, save_steps=2, save_total_limit=2)
    names = sorted(p.name for p in (result.output_dir / "checkpoints").iterdir())
    assert names == ["step-10", "step-8"]
    # every checkpoint carries the exported LoRA as well as the resumable state
    assert (result.output_dir / "checkpoints" / "step-8" / "run.lorakit.safetensors").exists()


def test_tensorboard_reader_reads_the_loss(toy_plugins, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = run(toy_plugins, tmp_path, max_steps=5, trackers=["tensorboard", "jsonl"])
    acc = EventAccumulator(str(result.output_dir / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    events = acc.Scalars("train/loss")
    assert [e.step for e in events] == [1, 2, 3, 4, 5]
    logged = [r["loss"] for r in read_metrics(result.output_dir)]
    assert [e.value for e in events] == pytest.approx(logged, rel=1e-6)


@pytest.mark.parametrize("name", ["dadapt_adam", "prodigy"])
def test_adaptive_optimizers_learn_and_log_effective_lr(toy_plugins, tmp_path, name):
    # Both overshoot this tiny problem with their defaults (D-Adaptation diverges); tamed here.
    args = {"growth_rate": 1.05, "d0": 1e-3} if name == "dadapt_adam" else {"d_coef": 0.3}
    with pytest.warns(UserWarning, match="expects learning_rate"):
        run(toy_plugins, tmp_path / "warn", optimizer=name, learning_rate=1e-4, max_steps=1)
    result = run(
        toy_plugins,
        tmp_path / "ok",
        optimizer=name,
        learning_rate=1.0,
        optimizer_args=args,
        epochs=6,
    )
    rows = read_metrics(result.output_dir)
    assert sum(r["loss"] for r in rows[-8:]) < 0.8 * sum(r["loss"] for r in rows[:8])
    assert len({round(r["lr"], 12) for r in rows}) > 1  # d·lr moves; the constant lr would not


@pytest.mark.parametrize("name", ["constant", "linear", "cosine", "cosine_with_restarts"])
def test_schedulers(toy_plugins, tmp_path, name):
    result = run(toy_plugins, tmp_path, lr_scheduler=name, lr_warmup_steps=2, max_steps=12)
    lrs = [r["lr"] for r in read_metrics(result.output_dir)]
    assert lrs[0] < lrs[2] == pytest.approx(1e-2)  # warmup to the peak
    if name == "constant":
        assert lrs[-1] == pytest.approx(1e-2)
    else:
        assert lrs[-1] < 1e-2 / 2


def test_host_memory_is_flat_across_epochs(toy_plugins, tmp_path):
    import psutil

    rss: dict[int, int] = {}

    class Probe:
        @lorakit.hookimpl
        def on_step_end(self, run, step, metrics):
            rss[int(metrics["epoch"] + 0.999)] = psutil.Process().memory_info().rss

    toy_plugins.pm.register(Probe())
    run(toy_plugins, tmp_path, epochs=10, samples=256, batch_size=16, num_workers=0)
    assert (rss[10] - rss[2]) / rss[2] < 0.05, rss


def test_backend_parameter_groups_get_their_own_learning_rate(toy_plugins, tmp_path):
    result = run(toy_plugins, tmp_path, max_steps=3, head_lr=1e-4, lr_scheduler="linear")
    groups = json.loads(
        (result.output_dir / "checkpoints" / "step-3" / "optimizer.json").read_text()
    )
    lrs = [g["initial_lr"] for g in groups["param_groups"]]
    assert lrs == [pytest.approx(1e-2), pytest.approx(1e-4)]


def test_dataloader_workers_do_not_outlive_the_run(toy_plugins, tmp_path):
    import psutil

    before = {p.pid for p in psutil.Process().children(recursive=True)}
    result = run(toy_plugins, tmp_path, epochs=3, num_workers=2)
    assert result.steps == 24
    left = {p.pid for p in psutil.Process().children(recursive=True)} - before
    assert not left, f"worker processes left behind: {left}"


def test_a_fresh_run_refuses_a_folder_with_checkpoints(toy_plugins, tmp_path):
    run(toy_plugins, tmp_path, max_steps=4, save_steps=2)
    with pytest.raises(
        UsageError, match="holds checkpoints of an earlier run: continue it with --resume"
    ):
        run(toy_plugins, tmp_path, max_steps=4, save_steps=2)
    assert run(toy_plugins, tmp_path, resume=True, max_steps=6).steps == 6


@pytest.mark.parametrize(
    "keys,fragment",
    [
        ({"optimizer_args": {"betas_": 1}}, "optimizer_args: adamw: "),
        (
            {"lr_scheduler": "cosine_with_restarts", "lr_scheduler_args": {"num_cycle": 2}},
            "lr_scheduler_args: ",
        ),
    ],
)
def test_wrong_optimizer_or_scheduler_arguments_are_config_errors(
    toy_plugins, tmp_path, keys, fragment
):
    from lorakit.errors import ConfigError

    with pytest.raises(ConfigError, match=fragment):
        run(toy_plugins, tmp_path, max_steps=2, **keys)
    assert not (tmp_path / "run").exists()


def test_a_failed_run_says_so_in_run_json(toy_plugins, tmp_path):
    from lorakit.errors import RunError

    with pytest.raises(RunError, match="loss is"):
        run(toy_plugins, tmp_path, max_steps=20, learning_rate=1e30, max_grad_norm=None)
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["status"] == "failed" and "loss is" in record["error"]


def test_sample_from_a_config_finds_the_runs_lora(toy_plugins, tmp_path):
    from lorakit.cli.model_cmds import trained_loras

    cfg = load_config(data=toy_config(tmp_path, max_steps=2))
    with pytest.raises(UsageError, match="no finished run"):
        trained_loras(cfg)
    train(cfg, plugins=toy_plugins, progress=False)
    assert trained_loras(cfg) == [tmp_path / "run" / "run.lorakit.safetensors"]


def test_a_longer_resume_keeps_the_learning_rate_continuous(toy_plugins, tmp_path):
    """Doubling max_steps on resume stretches the rest of the schedule instead of jumping."""
    first = run(toy_plugins, tmp_path / "a", max_steps=8, save_steps=4, lr_scheduler="linear")
    lrs = [r["lr"] for r in read_metrics(first.output_dir)]
    longer = run(
        toy_plugins,
        tmp_path / "b",
        resume=str(first.output_dir / "checkpoints" / "step-4"),
        max_steps=16,
        lr_scheduler="linear",
        train_data_dir=str(tmp_path / "a"),
    )
    tail = [r["lr"] for r in read_metrics(longer.output_dir)]
    assert len(tail) == 12
    assert tail[0] == pytest.approx(lrs[4])  # where the first run was: 0.5 of the peak
    steps = [b - a for a, b in zip(tail, tail[1:], strict=False)]
    assert all(d < 0 for d in steps) and max(steps) - min(steps) < 1e-9  # even, to 0
    assert tail[-1] > 0
    record = json.loads(
        (longer.output_dir / "checkpoints" / "step-16" / "trainer_state.json").read_text()
    )
    assert record["total_steps"] == 16 and record["lr_remaps"] == [[4, 8, 16]]


def test_the_fp16_loss_scale_is_checkpointed(tmp_path):
    """The GradScaler's state (the loss scale reached) is saved and restored."""
    from accelerate import Accelerator

    from lorakit.engine.checkpoint import load_checkpoint, save_checkpoint
    from lorakit.engine.distributed import Strategy
    from lorakit.engine.state import TrainerState

    def parts(scale):
        accelerator = Accelerator(cpu=True)
        accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=scale)
        module = torch.nn.Linear(2, 2)
        optimizer = torch.optim.AdamW(module.parameters())
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
        return accelerator, Strategy("ddp", accelerator, module), optimizer, scheduler

    accelerator, strategy, optimizer, scheduler = parts(1024.0)
    accelerator.scaler.scale(torch.ones(()))  # the scale exists from the first use
    accelerator.scaler.update(new_scale=96.0)
    path = save_checkpoint(
        tmp_path, TrainerState(step=3), strategy, optimizer, scheduler, keep=None
    )
    fresh, strategy2, optimizer2, scheduler2 = parts(65536.0)
    load_checkpoint(path, strategy2, optimizer2, scheduler2)
    assert fresh.scaler.get_scale() == 96.0


def test_auto_batch_size_halves_the_micro_batch_on_out_of_memory(toy_plugins, tmp_path):
    """batch 8 runs out of memory (above 4): batch 4 × accumulation 2 from then on trains
    exactly like a run set to it from the start, and a resume keeps that layout."""
    keys = dict(max_steps=6, save_steps=3, lr_scheduler="cosine", lr_warmup_steps=2)
    auto = run(
        toy_plugins, tmp_path / "auto", batch_size=8, auto_batch_size=True, oom_above=4, **keys
    )
    fixed = run(
        toy_plugins, tmp_path / "fixed", batch_size=4, gradient_accumulation_steps=2, **keys
    )
    for key, value in lora(fixed).items():
        torch.testing.assert_close(lora(auto)[key], value, rtol=1e-6, atol=1e-7)
    rows = read_metrics(auto.output_dir)
    assert [r["lr"] for r in rows] == [r["lr"] for r in read_metrics(fixed.output_dir)]
    record = json.loads((auto.output_dir / "run.json").read_text())
    assert record["auto_batch_size"] == [
        {"step": 1, "batch_size": 4, "gradient_accumulation_steps": 2}
    ]
    assert record["effective_batch"] == 8

    # Resumed with the config as written (batch 8): the checkpoint's layout is used.
    resumed = run(
        toy_plugins,
        tmp_path / "resumed",
        resume=str(auto.output_dir / "checkpoints" / "step-3"),
        batch_size=8,
        auto_batch_size=True,
        oom_above=4,
        train_data_dir=str(tmp_path / "auto"),
        **keys,
    )
    for key, value in lora(auto).items():
        torch.testing.assert_close(lora(resumed)[key], value, rtol=1e-6, atol=1e-7)

    with pytest.raises(lorakit.errors.RunError, match="out of memory"):  # no auto: the error
        run(toy_plugins, tmp_path / "plain", batch_size=8, oom_above=4, **keys)
