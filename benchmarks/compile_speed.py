"""What ``torch_compile: true`` buys on this machine: the same llm LoRA run eager and compiled.

Both sides train a Llama of hidden 256, 4 layers, 8 heads (random weights) on the same 160
QA rows, batch 8, ``--steps`` steps, LoRA rank 8 on q_proj/v_proj, each in a fresh process;
the compiled side sets ``torch_compile: true`` (inductor, or ``--backend``). The script prints
each side's steps/s after ``--warmup`` steps (the compilation falls in the first steps), the
whole process's wall clock (compilation included) and the last loss::

    HF_HUB_OFFLINE=1 python benchmarks/compile_speed.py --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def worker(args: argparse.Namespace) -> None:
    import torch

    from lorakit.config import load_config
    from lorakit.engine import train

    if args.threads:
        torch.set_num_threads(args.threads)
    keys: dict[str, Any] = {}
    if args.worker == "compiled":
        keys = {"torch_compile": True, "torch_compile_backend": args.backend}
    with tempfile.TemporaryDirectory() as tmp:
        config = load_config(
            data={
                "task_type": "text-generation",
                "base_model": args.model,
                "train_data_dir": args.data,
                "output_dir": str(Path(tmp) / "run"),
                "seed": 0,
                "lora_rank": 8,
                "lora_alpha": 16,
                "target_modules": ["q_proj", "v_proj"],
                "batch_size": 8,
                "max_steps": args.steps,
                "learning_rate": 2e-4,
                **keys,
            }
        )
        result = train(config, progress=False)
        rows = [json.loads(line) for line in (result.output_dir / "metrics.jsonl").open()]
    t = [r["elapsed_s"] for r in rows]
    w = args.warmup
    print(
        "RESULT "
        + json.dumps(
            {
                "steps_per_s": (len(t) - w) / (t[-1] - t[w - 1]),
                "loop_s": t[-1],
                "loss": rows[-1]["loss"],
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=10, help="Untimed first steps.")
    parser.add_argument("--backend", default="inductor")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default).")
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--worker", choices=("eager", "compiled"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    from lorakit_llm.testing import build_tiny_llama, write_qa_jsonl

    with tempfile.TemporaryDirectory() as tmp:
        model = build_tiny_llama(Path(tmp) / "llama", hidden_size=256, num_layers=4, num_heads=8)
        data = write_qa_jsonl(Path(tmp) / "qa.jsonl", 160)
        results = {}
        for side in ("eager", "compiled"):
            command = [
                sys.executable,
                __file__,
                "--worker",
                side,
                "--model",
                str(model),
                "--data",
                str(data),
                "--steps",
                str(args.steps),
                "--warmup",
                str(args.warmup),
                "--backend",
                args.backend,
                "--threads",
                str(args.threads),
            ]
            start = time.perf_counter()
            done = subprocess.run(
                command,
                capture_output=True,
                text=True,
                check=False,
                env={**os.environ, "HF_HUB_OFFLINE": "1"},
            )
            wall = time.perf_counter() - start
            line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
            if line is None:
                raise SystemExit(f"{side} failed:\n{done.stderr[-3000:]}")
            results[side] = {**json.loads(line[7:]), "wall_s": wall}
            r = results[side]
            print(
                f"{side:8s} {r['steps_per_s']:6.2f} steps/s after {args.warmup} steps  "
                f"loop {r['loop_s']:6.1f} s  whole process {wall:6.1f} s  "
                f"loss {r['loss']:.4f}",
                flush=True,
            )
    e, c = results["eager"], results["compiled"]
    print(
        f"compiled / eager: ×{c['steps_per_s'] / e['steps_per_s']:.2f} steps/s after warm-up, "
        f"×{e['wall_s'] / c['wall_s']:.2f} whole process"
    )


if __name__ == "__main__":
    main()
