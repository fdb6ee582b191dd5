"""Every GPU figure of lorakit in one run: real model shapes, random weights, ``lorakit train``.

Each case is built from its architecture's config with random weights (speed and memory
depend on the shapes, not on the values; nothing is downloaded), written to disk as the
folder a user would point ``base_model`` at, and trained by ``lorakit train`` itself from
the shipped template (``lorakit config init``'s text) with only the model, data, resolution
or sequence length, batch size 1 and the step count replaced (and previews, intermediate
checkpoints and the learning-rate warm-up off):

=================  ========================================================================
``sd15-512``       SD1.5 (UNet 860 M, CLIP-L, VAE) at 512 px, template ``sd15``
``sdxl-1024``      SDXL (UNet 2.6 B, CLIP-L + CLIP-bigG, VAE) at 1024 px, template ``sdxl``
``flux1-dev-512``  FLUX.1-dev (transformer 11.9 B, CLIP-L, T5-XXL, 16-channel VAE), 512 px
``flux1-dev-1024`` the same at 1024 px, template ``flux1``
``llama2-7b-*``    Llama-2-7B at 2048 tokens: ``lora`` (bf16, template ``7b``) and
                   ``qlora`` (4-bit NF4 base, template ``qlora``)
``llama3-8b-*``    Llama-3-8B (GQA, 128k vocabulary) at 2048 tokens, the same two
=================  ========================================================================

Per case: steps/s after ``--warmup`` steps (from the run's own ``metrics.jsonl``), images/s
or tokens/s, model FLOPs utilisation, the peak ``torch.cuda.max_memory_allocated`` of the
``lorakit train`` process beside ``lorakit plan``'s prediction for the same config, and,
where ``benchmarks/`` has a reference loop (diffusers' text-to-image LoRA loop for SD1.5 and
SDXL, Trainer + PEFT with ``attn_implementation="sdpa"`` for the bf16 Llama cases), that
loop on the same model, data and step count, and the ratio of the two loops' throughputs
(each from its first step to its last). The reference loops do not checkpoint activations,
so these cases run lorakit with ``gradient_checkpointing: false`` too.

Model FLOPs per trained token (written into every row):

- transformers (Llama, FLUX.1): ``6 · N · tokens`` with N the parameters the tokens pass
  through: every parameter of the trained model except the input embedding table (a lookup;
  a tied LM head counts once, as the head), LoRA factors left out (<1 %). For FLUX.1 the
  tokens of one image are its ``(side / 16)²`` latent patches plus 512 T5 tokens. With a
  frozen base no weight gradients are computed, so the work done is nearer ``4 · N ·
  tokens``: the ``6 N`` figure is the convention, and MFU by it reads 1.5× high;
- UNets: a convolution applies each weight at every position, so ``6 · N · tokens`` does not
  count them; instead ``3 · F``, with F the forward FLOPs of one image counted by
  ``torch.utils.flop_counter.FlopCounterMode`` at the case's shape (backward ≈ 2 forwards).

MFU = model FLOPs per step × steps/s ÷ the card's dense bf16 peak (``PEAK_TFLOPS``).

    python benchmarks/gpu_suite.py --out results/          # CUDA: the whole suite
    python benchmarks/gpu_suite.py --dry-run --out /tmp/s  # CPU, tiny shapes, seconds

``--dry-run`` runs every case the same way at tiny shapes on CPU (float32; 4-bit off, as
bitsandbytes' NF4 needs CUDA; peak memory is then the process's peak RSS), so the suite
cannot rot where no GPU is. ``benchmarks/gpu_check.sh`` runs it on a bare GPU machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from gpu_models import build  # noqa: E402  (benchmarks/ is not a package)

#: Dense bf16 tensor-core peak, TFLOP/s, by a substring of ``torch.cuda.get_device_name``.
PEAK_TFLOPS = {
    "H200": 989.0,
    "H100 PCIe": 756.0,
    "H100": 989.0,
    "A100": 312.0,
    "L40S": 362.0,
    "4090": 165.2,
    "A10G": 70.0,
    "L4": 121.0,
}


@dataclass(frozen=True)
class Case:
    name: str
    model: str  # key of MODELS
    template: tuple[str, str]  # (backend, template) as ``lorakit config init`` takes them
    size: int  # pixels (image models) or tokens (language models)
    four_bit: bool = False
    reference: str | None = None  # "diffusers" or "trainer"


CASES = (
    Case("sd15-512", "sd15", ("sd", "sd15"), 512, reference="diffusers"),
    Case("sdxl-1024", "sdxl", ("sd", "sdxl"), 1024, reference="diffusers"),
    Case("flux1-dev-512", "flux1-dev", ("sd", "flux1"), 512),
    Case("flux1-dev-1024", "flux1-dev", ("sd", "flux1"), 1024),
    Case("llama2-7b-lora", "llama2-7b", ("llm", "7b"), 2048, reference="trainer"),
    Case("llama2-7b-qlora", "llama2-7b", ("llm", "qlora"), 2048, four_bit=True),
    Case("llama3-8b-lora", "llama3-8b", ("llm", "7b"), 2048, reference="trainer"),
    Case("llama3-8b-qlora", "llama3-8b", ("llm", "qlora"), 2048, four_bit=True),
)
#: The LoRA of the reference loops in benchmarks/ (lorakit trains the same one there).
REFERENCE_LORA = {
    "diffusers": {
        "lora_rank": 8,
        "lora_alpha": 8,
        "target_modules": ["to_q", "to_k", "to_v", "to_out.0"],
    },
    "trainer": {"lora_rank": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"]},
}
CASE_SIDE = {"sd15": 512, "sdxl": 1024}
#: Sizes of the dry run (the tiny models' own).
TINY_SIZE = {"sd15": 64, "sdxl": 64, "flux1-dev": 64, "llama2-7b": 256, "llama3-8b": 256}


# -- data and configs -------------------------------------------------------------------------


def write_data(case: Case, root: Path, size: int, rows: int) -> Path:
    """Images at ``size`` px with captions, or QA rows longer than ``size`` tokens."""
    import json as _json

    if case.model.startswith("llama"):
        from lorakit_llm.testing import qa_pairs

        path = root / "rows.jsonl"
        with path.open("w", encoding="utf-8") as handle:
            for pair in qa_pairs(rows):  # ~3 characters a token: truncated at ``size``
                answer = " ".join([pair["answer"]] * (size // 4))
                handle.write(_json.dumps({"question": pair["question"], "answer": answer}) + "\n")
        return path
    from lorakit_sd.testing import write_tiny_images

    return write_tiny_images(root / "images", rows, sizes=[(size, size)])


def case_config(case: Case, model: str, data: Path, out: Path, steps: int, dry: bool) -> Path:
    """The template ``lorakit config init`` writes, with the suite's replacements."""
    import yaml

    from lorakit.config.templates import template_text

    cfg = yaml.safe_load(template_text(*case.template))
    size = TINY_SIZE[case.model] if dry else case.size
    cfg.update(
        base_model=model,
        train_data_dir=str(data),
        output_dir=str(out / "run"),
        max_steps=steps,
        batch_size=1,
        gradient_accumulation_steps=1,
        save_steps=10**6,
        sample_prompts=[],
        sample_every_n_steps=0,
        logging_steps=1,
        lr_warmup_steps=0,
    )
    if case.reference:  # the reference loop's LoRA, without activation checkpointing
        cfg.update(REFERENCE_LORA[case.reference], gradient_checkpointing=False)
    if dry:
        cfg["mixed_precision"] = "no"
    if case.template[0] == "sd":
        cfg["sd"].update(resolution=size, bucket=False, cache_to_disk=False)
    else:
        cfg["llm"].update(
            max_seq_len=size, load_in_4bit=case.four_bit and not dry, torch_dtype="auto"
        )
    path = out / "config.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    return path


# -- running ----------------------------------------------------------------------------------


def load_benchmark(name: str) -> Any:
    """One of the reference scripts in benchmarks/, as a module."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, HERE / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def task_plan(config: str) -> dict[str, Any]:
    """The predicted peak of ``lorakit plan --config CONFIG`` (its ``bytes.total``): the same
    planner, without the second trace with gradient checkpointing switched the other way."""
    from lorakit.config import load_config
    from lorakit.planning import local_card, make_plan

    try:
        plan = make_plan(load_config(Path(config)), local_card(), both=False)
    except Exception as exc:  # noqa: BLE001 - a missing prediction is a row's field, not a stop
        return {"bytes": None, "plan_error": str(exc).splitlines()[0] if str(exc) else repr(exc)}
    return {"bytes": int(plan.estimate.total)}


def task_train(config: str) -> dict[str, Any]:
    """``lorakit train --config CONFIG``; its exit code and the process's peak memory."""
    import resource

    import torch

    from lorakit.cli import main

    code: Any = 0
    try:
        main(["train", "--config", config])
    except SystemExit as exc:
        code = exc.code
    if torch.cuda.is_available():
        peak, kind = torch.cuda.max_memory_allocated(), "cuda_max_memory_allocated"
    else:
        peak, kind = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "peak_rss"
    return {"code": code or 0, "bytes": peak, "kind": kind}


def task_reference(loop: str, model: str, data: str, steps: int, size: int, work: str) -> Any:
    """The benchmarks/ reference loop on the same model, data and steps: its steps/s from
    its first step to its last."""
    if loop == "diffusers":
        ns = argparse.Namespace(
            model=model,
            base_config=None,
            data=data,
            steps=steps,
            batch_size=1,
            resolution=size,
            warmup=0,
        )
        return {"steps_per_s": load_benchmark("sd_train_speed").run_plain(ns)["steps_per_s"]}
    ns = argparse.Namespace(
        model=model,
        data=Path(data),
        batch_size=1,
        epochs=1,
        threads=0,
        max_steps=0,
        case="throughput",
        max_seq_len=size,
    )
    result = load_benchmark("llm_train_speed").run_trainer(ns, Path(work), grouped=False)
    return {"steps_per_s": result["steps"] / result["loop_s"]}


TASKS = {"plan": task_plan, "train": task_train, "reference": task_reference}


def call(task: str, log: Path, isolate: bool, timeout: float, **kwargs: Any) -> dict[str, Any]:
    """Run one task: in a fresh process (``isolate``: its own peak memory, a clean GPU; its
    output to ``log``) or in this one (the dry run: imports paid once). Adds ``wall_s``."""
    start = time.perf_counter()
    if not isolate:
        result = TASKS[task](**kwargs)
        return {**result, "wall_s": round(time.perf_counter() - start, 1)}
    out = log.with_suffix(".json")
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "LORAKIT_NO_UPDATE_CHECK": "1",
        "PYTHONUNBUFFERED": "1",
    }
    command = [sys.executable, __file__, "--task", task, json.dumps(kwargs), str(out)]
    with log.open("w", encoding="utf-8") as handle:
        try:
            subprocess.run(
                command,
                stdout=handle,
                stderr=subprocess.STDOUT,
                env=env,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {timeout:.0f} s, see {log.name}"}
    if not out.is_file():
        return {"error": f"failed, see {log.name}"}
    result = json.loads(out.read_text(encoding="utf-8"))
    return {**result, "wall_s": round(time.perf_counter() - start, 1)}


def loop_rates(metrics: Path, warmup: int) -> tuple[float, float, float | None, int]:
    """``(steps/s after warm-up, steps/s from the first step, last loss, steps)``."""
    rows = [json.loads(line) for line in metrics.open(encoding="utf-8")]
    t = [r["elapsed_s"] for r in rows]
    after = (len(t) - warmup) / (t[-1] - t[warmup - 1]) if warmup and len(t) > warmup else None
    whole = len(t) / t[-1]
    return after or whole, whole, rows[-1].get("loss"), len(rows)


REFERENCE_LABELS = {
    "diffusers": "diffusers text-to-image LoRA loop (VAE and text encoder every step)",
    "trainer": "Trainer + PEFT (sdpa, padded)",
}


def run_case(
    case: Case,
    built: dict[str, Any],
    args: argparse.Namespace,
    device: str,
    peak_flops: float | None,
) -> dict[str, Any]:
    dry = args.dry_run
    size = TINY_SIZE[case.model] if dry else case.size
    work = args.out / "work" / case.name
    work.mkdir(parents=True, exist_ok=True)
    steps = args.warmup + args.steps
    data = write_data(case, work, size, rows=steps)
    config = case_config(case, built["path"], data, work, steps, dry)
    row: dict[str, Any] = {
        "case": case.name,
        "model": case.model,
        "template": case.template[1],
        "size": size,
        "batch": 1,
        "steps": steps,
        "warmup": args.warmup,
        "four_bit": case.four_bit and not dry,
    }
    iso, limit = not dry, args.timeout
    plan = call("plan", work / "plan.log", iso, limit, config=str(config))
    row["plan_bytes"], row["plan_s"] = plan.get("bytes"), plan.get("wall_s")
    peak = call("train", work / "train.log", iso, limit, config=str(config))
    row["wall_s"] = peak.get("wall_s")
    metrics = work / "run" / "metrics.jsonl"
    if peak.get("code") != 0 or not metrics.is_file():
        return {**row, "error": f"lorakit train: {peak.get('error') or peak.get('code')}"}
    after, whole, loss, done = loop_rates(metrics, args.warmup)
    llm = case.model.startswith("llama")
    per_step = size if llm else 1  # tokens or images
    if llm:
        flops, formula = 6 * built["n"] * size, f"6 · N · tokens = 6 · {built['n']:,} · {size}"
    elif case.model == "flux1-dev":
        tokens = (size // 16) ** 2 + 512
        flops = 6 * built["n"] * tokens
        formula = f"6 · N · tokens = 6 · {built['n']:,} · ({size}/16)² + 512"
    else:
        flops = 3 * built["forward_flops"]
        formula = f"3 · F_forward = 3 · {built['forward_flops']:,} (FlopCounterMode)"
    row.update(
        steps_done=done,
        steps_per_s=round(after, 4),
        loop_steps_per_s=round(whole, 4),
        **{("tokens_per_s" if llm else "images_per_s"): round(after * per_step, 4)},
        n_active=built["n"],
        flops_per_step=flops,
        flops_formula=formula,
        mfu=round(flops * after / peak_flops, 4) if peak_flops else None,
        peak_bytes=peak["bytes"],
        peak_kind=peak["kind"],
        final_loss=loss,
        plan_ratio=round(peak["bytes"] / row["plan_bytes"], 3) if row["plan_bytes"] else None,
    )
    if case.reference and not args.no_reference:
        ref = call(
            "reference",
            work / "reference.log",
            iso,
            limit,
            loop=case.reference,
            model=built["path"],
            data=str(data),
            steps=steps,
            size=size,
            work=str(work / "reference"),
        )
        ref["loop"] = REFERENCE_LABELS[case.reference]
        if "steps_per_s" in ref:
            ref["steps_per_s"] = round(ref["steps_per_s"], 4)
            ref["ratio"] = round(whole / ref["steps_per_s"], 3)
        row["reference"] = ref
    return row


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in (
        "torch",
        "transformers",
        "diffusers",
        "peft",
        "accelerate",
        "bitsandbytes",
        "lorakit",
        "lorakit-sd",
        "lorakit-llm",
    ):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "-"
    return out


def gib(n: float | None) -> str:
    return "-" if n is None else f"{n / 2**30:.2f}"


def markdown(report: dict[str, Any]) -> str:
    """The results as one Markdown table, with the conditions above it."""
    lines = [
        f"Device: {report['device']}; "
        + ", ".join(f"{k} {v}" for k, v in report["versions"].items()),
        f"{report['warmup']} warm-up + {report['steps']} timed steps, batch 1"
        + (" (dry run: tiny shapes on CPU)" if report["dry_run"] else ""),
        "",
        "| case | steps/s | images or tokens/s | MFU | peak GiB | plan GiB | peak/plan "
        "| reference loop steps/s | lorakit/reference | model FLOPs per step |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in report["cases"]:
        if "error" in row:
            lines.append(f"| {row['case']} | failed: {row['error']} |" + " |" * 8)
            continue
        rate = row.get("tokens_per_s", row.get("images_per_s"))
        unit = "tok/s" if "tokens_per_s" in row else "img/s"
        ref = row.get("reference") or {}
        mfu = "-" if row["mfu"] is None else f"{100 * row['mfu']:.1f} %"
        ratio = "-" if row["plan_ratio"] is None else f"{row['plan_ratio']:.2f}"
        lines.append(
            f"| {row['case']} | {row['steps_per_s']:.3f} | {rate:,.1f} {unit} | {mfu} | "
            f"{gib(row['peak_bytes'])} | {gib(row['plan_bytes'])} | {ratio} | "
            f"{ref.get('steps_per_s', '-') if not ref.get('error') else ref['error']} | "
            f"{ref.get('ratio', '-')} | {row['flops_formula']} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the suite; write and return its report."""
    if (
        argv is None and len(sys.argv) == 5 and sys.argv[1] == "--task"
    ):  # one isolated task (see call)
        result = TASKS[sys.argv[2]](**json.loads(sys.argv[3]))
        Path(sys.argv[4]).write_text(json.dumps(result), encoding="utf-8")
        return result
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("gpu-suite"), help="Results folder.")
    parser.add_argument("--dry-run", action="store_true", help="Tiny shapes on CPU.")
    parser.add_argument("--steps", type=int, default=None, help="Timed steps (10; dry run 2).")
    parser.add_argument("--warmup", type=int, default=None, help="Warm-up steps (3; dry 1).")
    parser.add_argument("--cases", help="Comma-separated case names (default: all).")
    parser.add_argument("--no-reference", action="store_true", help="Skip reference loops.")
    parser.add_argument("--timeout", type=float, default=900, help="Seconds per child run.")
    args = parser.parse_args(argv)
    args.steps = args.steps or (2 if args.dry_run else 10)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.dry_run else 3)
    import torch

    cuda = torch.cuda.is_available()
    if not cuda and not args.dry_run:
        raise SystemExit("gpu_suite: no CUDA device here; --dry-run runs it on CPU at tiny shapes")
    device = "cuda" if cuda and not args.dry_run else "cpu"
    name = torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu"
    peak = next((v for k, v in PEAK_TFLOPS.items() if k in name), None) if cuda else None
    chosen = [c for c in CASES if not args.cases or c.name in args.cases.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "device": name,
        "peak_tflops_bf16": peak,
        "dry_run": args.dry_run,
        "steps": args.steps,
        "warmup": args.warmup,
        "versions": versions(),
        "cases": [],
    }
    started = time.perf_counter()
    threads = torch.get_num_threads()
    if args.dry_run:  # tiny shapes: one thread is the fastest on a shared CPU
        torch.set_num_threads(1)
    try:
        for model in dict.fromkeys(c.model for c in chosen):
            run_model(model, chosen, args, device, peak, report)
    finally:
        torch.set_num_threads(threads)
    report["total_s"] = round(time.perf_counter() - started, 1)
    (args.out / "gpu_suite.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    (args.out / "gpu_suite.md").write_text(markdown(report), encoding="utf-8")
    print(markdown(report))
    return report


def run_model(
    model: str,
    chosen: list[Case],
    args: argparse.Namespace,
    device: str,
    peak: float | None,
    report: dict[str, Any],
) -> None:
    """Build one model, run its cases, delete it (the disk holds one model at a time)."""
    folder = args.out / "work" / "models" / model
    start = time.perf_counter()
    side = TINY_SIZE[model] if args.dry_run else CASE_SIDE.get(model, 0)
    built = build(model, folder, args.dry_run, device, side)
    report.setdefault("build_s", {})[model] = round(time.perf_counter() - start, 1)
    for case in (c for c in chosen if c.model == model):
        row = run_case(case, built, args, device, peak * 1e12 if peak else None)
        report["cases"].append(row)
        print(json.dumps(row), flush=True)
    shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
