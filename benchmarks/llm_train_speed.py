"""Training speed of lorakit's llm backend against transformers' Trainer + PEFT.

Both train the same LoRA (rank 8 on q_proj/v_proj) on the same model and the same token
rows (chat template, loss on the answers only) for one epoch:

- lorakit: ``lorakit.engine.train`` with the llm backend: batches of ``--batch-size`` rows,
  length-grouped and packed without padding, no attention across rows;
- reference: ``transformers.Trainer`` on a ``get_peft_model`` model, rows right-padded to
  the longest in each batch of ``--batch-size`` (what most scripts do).

Each run is a fresh process (so peak memory is its own), the two alternate, and the
script prints each run, the medians, and the median of the paired ratios:

    HF_HUB_OFFLINE=1 python benchmarks/llm_train_speed.py            # tiny random Llama
    python benchmarks/llm_train_speed.py --model ./llama-2-7b --rows 2000 --repeats 3

Throughput is real (unpadded) tokens per second of the training loop (model loading and
tokenization excluded). Peak memory is the process's peak RSS on CPU, or
``torch.cuda.max_memory_allocated`` on a GPU.

``--case long-tail`` is the shape of a small fine-tune with uneven answers, timed as a user
feels it: 600 QA rows whose answer lengths follow a Pareto tail (most short, a few ten
times longer), a Llama of hidden 256, 4 layers, 8 heads, ``batch_size: 8``, 6 epochs,
LoRA rank 8 on q_proj/v_proj; each side is a whole process, from start to the exported
adapter (lorakit with its defaults; the reference: Trainer + PEFT with
``DataCollatorForSeq2Seq`` padded batches, then ``save_pretrained``). It prints wall-clock
seconds, peak RSS, optimizer steps and final loss of each run, and the paired ratios::

    HF_HUB_OFFLINE=1 python benchmarks/llm_train_speed.py --case long-tail --repeats 2
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


def rows(model: str, data: Path, max_seq_len: int) -> Any:
    """The token rows both sides train on (lorakit's reader and tokenizer)."""
    from lorakit_llm.chat_templates import resolve_template
    from lorakit_llm.readers import read_chat
    from lorakit_llm.tokenize import tokenize_records
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    template, _ = resolve_template(None, tokenizer)
    data_rows = tokenize_records(
        read_chat(data), tokenizer, template, max_seq_len=max_seq_len, train_on_inputs=False
    )
    return tokenizer, data_rows


def peak_memory_mb() -> float:
    import resource

    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def lorakit_run(args: argparse.Namespace, work: Path, **keys: Any) -> tuple[Any, float]:
    """``(result, last loss)`` of a lorakit run: LoRA rank 8 on q_proj/v_proj, plus ``keys``."""
    from lorakit.config import load_config
    from lorakit.engine import train

    data = {
        "task_type": "text-generation", "base_model": args.model,
        "train_data_dir": str(args.data), "output_dir": str(work / "lorakit"),
        "lora_rank": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"], "seed": 0,
        "trackers": ["jsonl"], **keys,
    }  # fmt: skip
    result = train(load_config(data=data), progress=False)
    losses = [json.loads(line)["loss"] for line in (result.output_dir / "metrics.jsonl").open()]
    return result, losses[-1]


def run_lorakit(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    result, loss = lorakit_run(
        args, work, batch_size=args.batch_size, epochs=1, learning_rate=1e-4,
        mixed_precision="auto", llm={"max_seq_len": args.max_seq_len, "packing": True},
    )  # fmt: skip
    return {"seconds": result.elapsed_s, "steps": result.steps, "loss": loss}


def peft_trainer(
    model_path: str,
    items: list[Any],
    collator: Any,
    work: Path,
    batch_size: int,
    epochs: int,
    learning_rate: float,
) -> tuple[Any, Any]:
    """``(trainer, peft model)``: Trainer + ``get_peft_model``, LoRA rank 8 on q_proj/v_proj."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

    cuda = torch.cuda.is_available()
    bf16 = cuda and torch.cuda.is_bf16_supported()
    base = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.bfloat16 if bf16 else None)
    torch.manual_seed(0)
    model = get_peft_model(
        base, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                          task_type="CAUSAL_LM")
    )  # fmt: skip
    training = TrainingArguments(
        output_dir=str(work / "trainer"), per_device_train_batch_size=batch_size,
        num_train_epochs=epochs, learning_rate=learning_rate, logging_steps=10**9,
        save_strategy="no", report_to="none", bf16=bf16, use_cpu=not cuda,
        dataloader_num_workers=0, remove_unused_columns=False, disable_tqdm=True, seed=0,
    )  # fmt: skip
    trainer = Trainer(model=model, args=training, train_dataset=items, data_collator=collator)
    return trainer, model


def run_trainer(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    import torch

    tokenizer, data = rows(args.model, args.data, args.max_seq_len)
    items = []
    for i in range(len(data)):
        ids, labels = data.row(i)
        items.append({"input_ids": ids.long(), "labels": labels.long()})
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def collate(batch: list[dict[str, Any]]) -> dict[str, Any]:
        width = max(len(b["input_ids"]) for b in batch)
        ids = torch.full((len(batch), width), pad)
        labels = torch.full((len(batch), width), -100)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for j, b in enumerate(batch):
            n = len(b["input_ids"])
            ids[j, :n], labels[j, :n], mask[j, :n] = b["input_ids"], b["labels"], 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}

    trainer, _ = peft_trainer(args.model, items, collate, work, args.batch_size, 1, 1e-4)
    start = time.perf_counter()
    output = trainer.train()
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "steps": output.global_step, "loss": output.training_loss}


def write_long_tail(path: Path, rows: int = 600, seed: int = 0) -> Path:
    """QA rows whose answers have Pareto-tailed lengths (most one sentence, a few ~10)."""
    import math
    import random

    from lorakit_llm.testing import qa_pairs

    rng = random.Random(seed)
    pairs = qa_pairs(rows, seed)
    with open(path, "w", encoding="utf-8") as handle:
        for pair in pairs:
            repeat = min(math.ceil(rng.paretovariate(1.6)), 12)
            answer = " ".join([pair["answer"]] * repeat)
            handle.write(json.dumps({"question": pair["question"], "answer": answer}) + "\n")
    return path


def long_tail_lorakit(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """lorakit with its defaults, as a user runs it: train, then the exported adapter."""
    result, loss = lorakit_run(args, work, batch_size=8, epochs=6, learning_rate=2e-4)
    assert (result.output_dir / "adapter" / "adapter_model.safetensors").is_file()
    return {"steps": result.steps, "loss": loss}


def long_tail_trainer(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """transformers.Trainer + PEFT, DataCollatorForSeq2Seq padded batches, then the adapter."""
    from lorakit_llm.chat_templates import resolve_template
    from lorakit_llm.readers import read_qa
    from lorakit_llm.tokenize import tokenize_records
    from transformers import AutoTokenizer, DataCollatorForSeq2Seq

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    template, _ = resolve_template(None, tokenizer)
    data = tokenize_records(read_qa(args.data), tokenizer, template, max_seq_len=2048,
                            train_on_inputs=False)  # fmt: skip
    items = []
    for i in range(len(data)):
        ids, labels = data.row(i)
        items.append({"input_ids": ids.tolist(), "labels": labels.tolist()})
    collator = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)
    trainer, model = peft_trainer(args.model, items, collator, work, 8, 6, 2e-4)
    output = trainer.train()
    model.save_pretrained(str(work / "trainer" / "adapter"))
    return {"steps": output.global_step, "loss": output.training_loss}


def worker(args: argparse.Namespace) -> None:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.case == "long-tail":
        with tempfile.TemporaryDirectory() as tmp:
            run = long_tail_lorakit if args.worker == "lorakit" else long_tail_trainer
            result = run(args, Path(tmp))
        result.update(peak_mb=peak_memory_mb(),
                      device="cuda" if torch.cuda.is_available() else "cpu")  # fmt: skip
        print("RESULT " + json.dumps(result), flush=True)
        return

    with tempfile.TemporaryDirectory() as tmp:
        run = run_lorakit if args.worker == "lorakit" else run_trainer
        result = run(args, Path(tmp))
    _, data = rows(args.model, args.data, args.max_seq_len)
    tokens = int(data.offsets[-1])
    result.update(
        tokens=tokens, tokens_per_s=tokens / result["seconds"], peak_mb=peak_memory_mb(),
        device="cuda" if torch.cuda.is_available() else "cpu",
    )  # fmt: skip
    print("RESULT " + json.dumps(result), flush=True)


def launch(kind: str, args: argparse.Namespace) -> dict[str, Any]:
    command = [sys.executable, __file__, "--worker", kind, "--model", args.model,
               "--data", str(args.data), "--max-seq-len", str(args.max_seq_len),
               "--batch-size", str(args.batch_size),
               "--threads", str(args.threads), "--case", args.case]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")}
    start = time.perf_counter()
    out = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    wall = time.perf_counter() - start
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return {**json.loads(line[7:]), "wall_s": wall}
    raise SystemExit(f"{kind} run failed:\n{out.stderr[-3000:]}")


def write_conversations(path: Path, rows: int, seed: int = 0) -> Path:
    """Chat rows of 1 to 12 QA turns: lengths vary as in real instruction data."""
    import random

    from lorakit_llm.testing import qa_pairs

    rng = random.Random(seed)
    pairs = qa_pairs(500, seed)
    with open(path, "w", encoding="utf-8") as handle:
        for _ in range(rows):
            messages = []
            for pair in rng.sample(pairs, rng.randint(1, 12)):
                messages += [{"role": "user", "content": pair["question"]},
                             {"role": "assistant", "content": pair["answer"]}]  # fmt: skip
            handle.write(json.dumps({"messages": messages}) + "\n")
    return path


def prepare(args: argparse.Namespace, work: Path) -> None:
    from lorakit_llm.testing import build_tiny_llama

    if args.case == "long-tail":
        if args.model is None:
            args.model = str(build_tiny_llama(work / "llama-256", hidden_size=256, num_layers=4,
                                              num_heads=8))  # fmt: skip
        if args.data is None:
            args.data = write_long_tail(work / "long-tail.jsonl")
        return
    if args.model is None:
        model = build_tiny_llama(work / "stand-in", hidden_size=args.hidden, num_layers=args.layers)
        args.model = str(model)
    if args.data is None:
        args.data = write_conversations(work / "chat.jsonl", args.rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="Model folder (default: a tiny random Llama).")
    parser.add_argument("--data", type=Path, help="QA JSONL (default: synthetic pairs).")
    parser.add_argument("--rows", type=int, default=400, help="Synthetic conversations.")
    parser.add_argument("--hidden", type=int, default=64, help="Stand-in model width.")
    parser.add_argument("--layers", type=int, default=2, help="Stand-in model depth.")
    parser.add_argument("--max-seq-len", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=16, help="Rows per batch (both).")
    parser.add_argument(
        "--threads", type=int, default=0, help="torch CPU threads per run (0: torch's default)."
    )
    parser.add_argument("--repeats", type=int, default=3, help="Runs of each, alternating.")
    parser.add_argument(
        "--case", choices=("throughput", "long-tail"), default="throughput",
        help="throughput: tokens/s of the loop; long-tail: whole process, Pareto answers.",
    )  # fmt: skip
    parser.add_argument("--worker", choices=("lorakit", "trainer"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return

    with tempfile.TemporaryDirectory() as tmp:
        prepare(args, Path(tmp))
        runs: dict[str, list[dict[str, Any]]] = {"lorakit": [], "trainer": []}
        for i in range(args.repeats):
            order = ("lorakit", "trainer") if i % 2 == 0 else ("trainer", "lorakit")
            for kind in order:
                result = launch(kind, args)
                runs[kind].append(result)
                if args.case == "long-tail":
                    print(f"run {i + 1} {kind:8s} {result['wall_s']:7.1f} s  "
                          f"peak {result['peak_mb']:7.0f} MB  {result['steps']:4d} steps  "
                          f"loss {result['loss']:.4f}", flush=True)  # fmt: skip
                    continue
                print(f"run {i + 1} {kind:8s} {result['tokens_per_s']:10.0f} tokens/s  "
                      f"peak {result['peak_mb']:8.0f} MB  {result['steps']:4d} steps  "
                      f"loss {result['loss']:.4f}  ({result['device']})", flush=True)  # fmt: skip

    def median(kind: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[kind])

    pairs = list(zip(runs["lorakit"], runs["trainer"], strict=True))
    if args.case == "long-tail":
        speed = statistics.median(b["wall_s"] / a["wall_s"] for a, b in pairs)
        memory = statistics.median(a["peak_mb"] / b["peak_mb"] for a, b in pairs)
        print()
        print(f"median wall s     lorakit {median('lorakit', 'wall_s'):7.1f}   "
              f"Trainer+PEFT (DataCollatorForSeq2Seq) {median('trainer', 'wall_s'):7.1f}")  # fmt: skip
        print(f"median peak MB    lorakit {median('lorakit', 'peak_mb'):7.0f}   "
              f"Trainer+PEFT (DataCollatorForSeq2Seq) {median('trainer', 'peak_mb'):7.0f}")  # fmt: skip
        print(f"lorakit vs Trainer: speed ×{speed:.2f} (wall clock), peak RSS ×{memory:.2f} "
              f"(median of {len(pairs)} paired runs)")  # fmt: skip
        return

    ratios = [
        a["tokens_per_s"] / b["tokens_per_s"]
        for a, b in zip(runs["lorakit"], runs["trainer"], strict=True)
    ]
    memory = [
        a["peak_mb"] / b["peak_mb"] for a, b in zip(runs["lorakit"], runs["trainer"], strict=True)
    ]
    print()
    print(f"median tokens/s   lorakit {median('lorakit', 'tokens_per_s'):10.0f}   "
          f"Trainer+PEFT (padded) {median('trainer', 'tokens_per_s'):10.0f}")  # fmt: skip
    print(f"median peak MB    lorakit {median('lorakit', 'peak_mb'):10.0f}   "
          f"Trainer+PEFT (padded) {median('trainer', 'peak_mb'):10.0f}")  # fmt: skip
    print(
        f"ratio lorakit / Trainer: speed ×{statistics.median(ratios):.2f}, "
        f"peak memory ×{statistics.median(memory):.2f} (median of {len(ratios)} paired runs)"
    )


if __name__ == "__main__":
    main()
