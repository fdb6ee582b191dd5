"""Training speed and memory of lorakit's sd backend against a plain diffusers loop.

Both train the same LoRA (rank 8 on the UNet attention) on the same model, images and
captions, with the same batch size, learning rate and number of steps:

- lorakit: ``lorakit.engine.train`` with the sd backend, its defaults on: VAE latents and
  caption embeddings computed once, the VAE and text encoder then off the accelerator;
- reference: the loop of diffusers' text-to-image LoRA example, written out here: every
  step encodes the batch's images with the VAE and its captions with the text encoder,
  then noises the latents and trains the UNet.

Each run is a fresh process (so peak memory is its own), the two alternate, and the script
prints each run, the medians, and the median of the paired ratios:

    HF_HUB_OFFLINE=1 python benchmarks/sd_train_speed.py          # tiny random SD1 model
    python benchmarks/sd_train_speed.py --family sdxl --steps 40 --repeats 5
    python benchmarks/sd_train_speed.py --model ./sd15-diffusers --data ./photos \
        --resolution 512 --batch-size 4

Steps per second are those of the training loop (after the first step; model loading
excluded). lorakit's one-off caching time is printed too, with the end-to-end time of the
whole run, so the break-even point is visible. Peak memory is the process's peak RSS on CPU,
or ``torch.cuda.max_memory_allocated`` on a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def peak_memory_mb() -> float:
    import resource

    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def precision() -> str:
    import torch

    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"


def run_lorakit(args: argparse.Namespace) -> dict[str, Any]:
    """One lorakit training run through the real engine; its loop speed and memory."""
    import lorakit_sd.plugin

    from lorakit.config import load_config
    from lorakit.engine import train
    from lorakit.plugins import build_plugins, set_plugins

    plugins = build_plugins(entry_points=False, extra=[("sd", lorakit_sd.plugin)])
    set_plugins(plugins)
    out = Path(tempfile.mkdtemp(prefix="sd-bench-"))
    sd: dict[str, Any] = {"resolution": args.resolution, "bucket_step": 8, "bucket": False}
    if args.base_config:
        sd["base_config"] = args.base_config
    data = {
        "task_type": "image-generation",
        "base_model": args.model,
        "train_data_dir": args.data,
        "output_dir": str(out / "run"),
        "lora_rank": 8,
        "batch_size": args.batch_size,
        "max_steps": args.steps,
        "learning_rate": 1e-4,
        "mixed_precision": precision(),
        "seed": 0,
        "trackers": ["jsonl"],
        "export_formats": ["kohya"],
        "sd": sd,
    }
    config = load_config(data=data, registries=plugins.registries)
    started = time.perf_counter()
    result = train(config, plugins=plugins, progress=False)
    wall = time.perf_counter() - started
    lines = (result.output_dir / "metrics.jsonl").read_text().splitlines()
    elapsed = [json.loads(line)["elapsed_s"] for line in lines]
    loop = elapsed[-1] - elapsed[0]
    return {
        "steps_per_s": (len(elapsed) - 1) / loop,
        "peak_mb": peak_memory_mb(),
        "wall_s": wall,
        "overhead_s": wall - (elapsed[-1] - elapsed[0]),
        "final_loss": result.final_loss,
    }


def _pixels(path: Path, size: int) -> Any:
    import numpy as np
    import torch
    from PIL import Image

    image = Image.open(path).convert("RGB").resize((size, size), Image.Resampling.BICUBIC)
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)


def run_plain(args: argparse.Namespace) -> dict[str, Any]:
    """The per-step-encoding loop: VAE and text encoder run on every batch."""
    import csv

    import torch
    from diffusers import DDPMScheduler
    from lorakit_sd.models import load_base
    from peft import LoraConfig

    torch.manual_seed(0)
    started = time.perf_counter()
    model = load_base(args.model, base_config=args.base_config)
    pipe = model.pipe
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if precision() == "bf16" else torch.float32
    for module in (pipe.vae, *model.text_encoders, pipe.unet):
        module.to(device, dtype)
    pipe.unet.add_adapter(
        LoraConfig(r=8, lora_alpha=8, target_modules=["to_q", "to_k", "to_v", "to_out.0"])
    )
    params = [p for p in pipe.unet.parameters() if p.requires_grad]
    for p in params:
        p.data = p.data.float()
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    with open(Path(args.data) / "metadata.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    images = [Path(args.data) / r["file_name"] for r in rows]
    captions = [r["text"] for r in rows]
    tokenizers = model.tokenizers
    pipe.unet.train()
    times = []
    loss = torch.zeros(())
    for step in range(args.steps):
        t0 = time.perf_counter()
        picks = [(step * args.batch_size + i) % len(images) for i in range(args.batch_size)]
        pixels = torch.stack([_pixels(images[i], args.resolution) for i in picks])
        text = [captions[i] for i in picks]
        with (
            torch.no_grad(),
            torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32),
        ):
            latents = pipe.vae.encode(pixels.to(device, dtype)).latent_dist.sample()
            latents = latents.float() * pipe.vae.config.scaling_factor
            hidden, added = [], None
            for tokenizer, encoder in zip(tokenizers, model.text_encoders, strict=True):
                ids = tokenizer(
                    text,
                    padding="max_length",
                    max_length=tokenizer.model_max_length,
                    truncation=True,
                    return_tensors="pt",
                ).input_ids.to(device)
                out = encoder(ids, output_hidden_states=True)
                hidden.append(out.hidden_states[-2] if model.family == "sdxl" else out[0])
                pooled = out[0]
            if model.family == "sdxl":
                size = args.resolution
                ids6 = torch.tensor([[size, size, 0, 0, size, size]] * len(picks), device=device)
                added = {"text_embeds": pooled.to(dtype), "time_ids": ids6.to(dtype)}
            hidden_states = torch.cat(hidden, dim=-1).to(dtype)
        noise = torch.randn_like(latents)
        timesteps = torch.randint(
            0, scheduler.config.num_train_timesteps, (len(picks),), device=device
        )
        noisy = scheduler.add_noise(latents, noise, timesteps)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            pred = pipe.unet(
                noisy.to(dtype), timesteps, hidden_states, added_cond_kwargs=added
            ).sample
        loss = torch.nn.functional.mse_loss(pred.float(), noise)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    wall = time.perf_counter() - started
    timed = times[args.warmup :]
    return {
        "steps_per_s": len(timed) / sum(timed),
        "peak_mb": peak_memory_mb(),
        "wall_s": wall,
        "overhead_s": wall - sum(timed),
        "final_loss": float(loss),
    }


def worker(args: argparse.Namespace) -> None:
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    result = run_lorakit(args) if args.worker == "lorakit" else run_plain(args)
    print("RESULT " + json.dumps(result), flush=True)


def prepare(args: argparse.Namespace, root: Path) -> None:
    """Build the tiny model and images unless --model / --data were given."""
    from lorakit_sd.families.unet_standin import build_tiny_sd
    from lorakit_sd.testing import write_tiny_images

    if args.model is None:
        tiny = build_tiny_sd(root / "model", args.family)
        args.model = str(tiny.single_file)
        args.base_config = str(tiny.config_dir)
    if args.data is None:
        size = (args.resolution, args.resolution)
        args.data = str(write_tiny_images(root / "data", args.images, sizes=[size]))


def child(args: argparse.Namespace, which: str) -> dict[str, Any]:
    command = [
        sys.executable,
        __file__,
        "--worker",
        which,
        "--model",
        args.model,
        "--data",
        args.data,
        "--steps",
        str(args.steps),
        "--batch-size",
        str(args.batch_size),
        "--resolution",
        str(args.resolution),
        "--threads",
        str(args.threads),
        "--warmup",
        str(args.warmup),
    ]
    if args.base_config:
        command += ["--base-config", args.base_config]
    env = {**os.environ, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")}
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    sys.stderr.write(done.stdout[-2000:] + done.stderr[-4000:])
    raise SystemExit(f"{which} run failed (exit {done.returncode})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", choices=["sd1", "sdxl"], default="sd1")
    parser.add_argument("--model", help="Base model (default: a tiny random one).")
    parser.add_argument("--base-config", help="Configs folder for a single-file --model.")
    parser.add_argument("--data", help="Image folder with metadata.csv (default: generated).")
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default).")
    parser.add_argument("--warmup", type=int, default=1, help="Untimed first steps (plain).")
    parser.add_argument("--worker", choices=["lorakit", "plain"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    with tempfile.TemporaryDirectory(prefix="sd-bench-") as tmp:
        prepare(args, Path(tmp))
        results: dict[str, list[dict[str, Any]]] = {"lorakit": [], "plain": []}
        for repeat in range(args.repeats):
            order = ("lorakit", "plain") if repeat % 2 == 0 else ("plain", "lorakit")
            for which in order:
                r = child(args, which)
                results[which].append(r)
                print(
                    f"run {repeat + 1} {which:8s} {r['steps_per_s']:7.2f} steps/s  "
                    f"peak {r['peak_mb']:8.1f} MB  outside the loop {r['overhead_s']:6.2f} s  "
                    f"whole run {r['wall_s']:6.2f} s  loss {r['final_loss']:.4f}"
                )
    med = {k: statistics.median(x["steps_per_s"] for x in v) for k, v in results.items()}
    mem = {k: statistics.median(x["peak_mb"] for x in v) for k, v in results.items()}
    ratios = [
        a["steps_per_s"] / b["steps_per_s"]
        for a, b in zip(results["lorakit"], results["plain"], strict=True)
    ]
    print(
        f"\nmedian steps/s: lorakit {med['lorakit']:.2f}, plain per-step encoding "
        f"{med['plain']:.2f}; paired ratio lorakit/plain = {statistics.median(ratios):.2f}x"
    )
    print(
        f"median peak memory: lorakit {mem['lorakit']:.0f} MB, plain {mem['plain']:.0f} MB; "
        f"ratio lorakit/plain = {mem['lorakit'] / mem['plain']:.2f}"
    )


if __name__ == "__main__":
    main()
