"""Training speed of lorakit's llm backend against transformers' Trainer + PEFT.

Every side trains the same LoRA (rank 8, alpha 16 on q_proj/v_proj) on the same model and the
same token rows (lorakit's reader, chat template and tokenizer; loss on the answers only),
with the same batch size, epochs and learning rate, and ends with the adapter on disk:

- ``lorakit``: ``lorakit.engine.train`` with the llm backend and its defaults for everything
  else (length-grouped batches packed without padding, TensorBoard and JSONL trackers, a
  checkpoint and the exported adapter);
- ``trainer``: ``transformers.Trainer`` on a ``get_peft_model`` model, batches right-padded
  by ``DataCollatorForSeq2Seq`` in random order (what most scripts do), then ``save_pretrained``;
- ``grouped``: the same Trainer with its length-grouped sampler
  (``train_sampling_strategy="group_by_length"``, formerly ``group_by_length=True``).

Each run is a fresh process and the sides alternate. Two times are taken the same way on
every side:

- ``wall_s``: the whole process, from its start to its exit (imports, model load,
  tokenization, training, the saved adapter), measured by the parent;
- ``loop_s``: the training loop, from the point just before the first batch is drawn (after
  the model, optimizer and data loader exist: lorakit's loop start, Trainer's
  ``on_train_begin``) to the end of the last optimizer step.

Tokens per second are the real (unpadded) tokens of the batches trained, counted as they
reach the model (Trainer) or the backend's loss (lorakit), divided by ``loop_s``.
``--max-steps N`` stops every side after N optimizer steps (a shorter run on a slow machine). Peak memory is
the process's peak RSS on CPU, or ``torch.cuda.max_memory_allocated`` on a GPU. The loss is
each side's last-step loss (one batch: informative, not a comparison).

Cases (``--case``):

- ``throughput`` (default): a tiny random Llama (``--hidden``, ``--layers``), ``--rows`` chats
  of 1 to 12 QA turns, ``--batch-size`` 16, one epoch;
- ``long-tail``: a Llama of hidden 256, 4 layers, 8 heads; 600 QA rows whose answer lengths
  follow a Pareto tail (most one sentence, a few ten times longer); batch 8, 6 epochs;
- ``smollm2``: SmolLM2-135M's shape (hidden 576, 30 layers, 9 heads, 3 key/value heads,
  intermediate 1536, vocabulary 49152, tied embeddings; random weights from ``LlamaConfig``),
  150 Pareto-tailed QA pairs (the size of a small medical QA set), batch 4 (the ``7b``
  template's), ``--epochs`` (default 1).

::

    HF_HUB_OFFLINE=1 python benchmarks/llm_train_speed.py
    HF_HUB_OFFLINE=1 python benchmarks/llm_train_speed.py --case long-tail --threads 1
    HF_HUB_OFFLINE=1 python benchmarks/llm_train_speed.py --case smollm2 --repeats 1
    HF_HUB_OFFLINE=1 python benchmarks/llm_train_speed.py --case smollm2 --profile 6
    python benchmarks/llm_train_speed.py --model ./llama-2-7b --data ./train.jsonl --repeats 3

``--profile N`` runs lorakit alone under ``torch.profiler`` for N optimizer steps (after two
to skip and one to warm up) and prints the table of the ops that took the most time.
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

#: ``case: (batch size, epochs, learning rate, max_seq_len)``; ``None``: from the arguments.
CASES: dict[str, tuple[int | None, int | None, float, int]] = {
    "throughput": (None, 1, 1e-4, 512),
    "long-tail": (8, 6, 2e-4, 2048),
    "smollm2": (4, None, 2e-4, 2048),
}
KINDS = ("lorakit", "trainer", "grouped")
LABELS = {
    "lorakit": "lorakit (defaults)",
    "trainer": "Trainer+PEFT, padded",
    "grouped": "Trainer+PEFT, group_by_length",
}
LORA = {"lora_rank": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"]}


def schedule(args: argparse.Namespace) -> tuple[int, int, float, int]:
    """``(batch size, epochs, learning rate, max_seq_len)`` of ``args.case``."""
    batch, epochs, lr, seq = CASES[args.case]
    return batch or args.batch_size, epochs or args.epochs, lr, args.max_seq_len or seq


def token_rows(args: argparse.Namespace) -> tuple[Any, Any]:
    """``(tokenizer, rows)``: the token rows every side trains on (lorakit's own pipeline)."""
    from lorakit_llm.chat_templates import resolve_template
    from lorakit_llm.readers import detect_chat, read_chat, read_qa
    from lorakit_llm.tokenize import tokenize_records
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    template, _ = resolve_template(None, tokenizer)
    records = read_chat(args.data) if detect_chat(args.data) else read_qa(args.data)
    seq = schedule(args)[3]
    return tokenizer, tokenize_records(
        records, tokenizer, template, max_seq_len=seq, train_on_inputs=False
    )


def peak_memory_mb() -> float:
    import resource

    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def lorakit_config(args: argparse.Namespace, out: Path, **keys: Any) -> Any:
    from lorakit.config import load_config

    batch, epochs, lr, seq = schedule(args)
    data = {
        "task_type": "text-generation",
        "base_model": args.model,
        "train_data_dir": str(args.data),
        "output_dir": str(out),
        "seed": 0,
        **LORA,
        "batch_size": batch,
        "epochs": epochs,
        "learning_rate": lr,
        "llm": {"max_seq_len": seq},
        **keys,
    }
    return load_config(data=data)


def run_lorakit(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """lorakit with its defaults, as a user runs it: train, then the exported adapter.

    The real tokens of every trained batch are counted as they reach the backend's loss
    (an observer: the run itself is unchanged)."""
    from lorakit.api import hookimpl
    from lorakit.engine import train
    from lorakit.plugins import build_plugins

    tokens = [0]

    class Counter:
        @hookimpl
        def on_train_start(self, run: Any) -> None:
            loss = run.backend.loss

            def counted(module: Any, batch: dict[str, Any]) -> Any:
                tokens[0] += int(batch["num_tokens"])
                return loss(module, batch)

            run.backend.loss = counted

    keys = {"max_steps": args.max_steps} if args.max_steps else {}
    plugins = build_plugins(extra=[("bench-token-counter", Counter())])
    result = train(lorakit_config(args, work / "lorakit", **keys), plugins=plugins, progress=False)
    assert (result.output_dir / "adapter" / "adapter_model.safetensors").is_file()
    rows = [json.loads(line) for line in (result.output_dir / "metrics.jsonl").open()]
    return {
        "loop_s": rows[-1]["elapsed_s"],
        "steps": result.steps,
        "loss": rows[-1]["loss"],
        "tokens": tokens[0],
    }


def run_trainer(args: argparse.Namespace, work: Path, grouped: bool) -> dict[str, Any]:
    """Trainer + PEFT, ``DataCollatorForSeq2Seq`` padded batches, then the adapter."""
    import dataclasses

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import (
        AutoModelForCausalLM,
        DataCollatorForSeq2Seq,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    batch, epochs, lr, _ = schedule(args)
    tokenizer, data = token_rows(args)
    items = []
    for i in range(len(data)):
        ids, labels = data.row(i)
        items.append({"input_ids": ids.tolist(), "labels": labels.tolist()})
    collator = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)
    cuda = torch.cuda.is_available()
    bf16 = cuda and torch.cuda.is_bf16_supported()
    base = AutoModelForCausalLM.from_pretrained(
        args.model, dtype=torch.bfloat16 if bf16 else None, attn_implementation="sdpa"
    )
    torch.manual_seed(0)
    model = get_peft_model(
        base,
        LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"),
    )
    options: dict[str, Any] = {}
    if grouped:  # the key's name changed in transformers 5.2x
        names = {f.name for f in dataclasses.fields(TrainingArguments)}
        if "train_sampling_strategy" in names:
            options["train_sampling_strategy"] = "group_by_length"
        else:
            options["group_by_length"] = True
    training = TrainingArguments(
        output_dir=str(work / "trainer"),
        per_device_train_batch_size=batch,
        num_train_epochs=epochs,
        learning_rate=lr,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        bf16=bf16,
        use_cpu=not cuda,
        dataloader_num_workers=0,
        remove_unused_columns=False,
        disable_tqdm=True,
        seed=0,
        max_steps=args.max_steps or -1,
        **options,
    )
    clock: dict[str, Any] = {"losses": [], "tokens": 0}

    def count(_: Any, call_args: Any, kwargs: dict[str, Any]) -> None:  # real tokens trained
        clock["tokens"] += int(kwargs["attention_mask"].sum())

    base.register_forward_pre_hook(count, with_kwargs=True)

    class Clock(TrainerCallback):  # type: ignore[misc]
        def on_train_begin(self, *_: Any, **__: Any) -> None:
            clock["start"] = time.perf_counter()

        def on_step_end(self, *_: Any, **__: Any) -> None:
            if cuda:
                torch.cuda.synchronize()
            clock["end"] = time.perf_counter()

        def on_log(self, *_: Any, logs: dict[str, float] | None = None, **__: Any) -> None:
            if logs and "loss" in logs:
                clock["losses"].append(logs["loss"])

    trainer = Trainer(
        model=model, args=training, train_dataset=items, data_collator=collator, callbacks=[Clock()]
    )
    output = trainer.train()
    model.save_pretrained(str(work / "trainer" / "adapter"))
    return {
        "loop_s": clock["end"] - clock["start"],
        "steps": output.global_step,
        "loss": clock["losses"][-1],
        "tokens": clock["tokens"],
    }


def run_profile(args: argparse.Namespace, work: Path) -> str:
    """lorakit's steps under ``torch.profiler``: two skipped, one warm-up, ``args.profile``
    recorded; the table of the ops with the most self time."""
    import torch
    from torch.profiler import ProfilerActivity, profile
    from torch.profiler import schedule as steps

    from lorakit.api import hookimpl
    from lorakit.engine import train
    from lorakit.plugins import build_plugins

    activities = [ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(ProfilerActivity.CUDA)
    prof = profile(activities=activities, schedule=steps(wait=2, warmup=1, active=args.profile))

    class Profiler:
        @hookimpl
        def on_train_start(self, run: Any) -> None:
            prof.start()

        @hookimpl
        def on_step_end(self, run: Any, step: int, metrics: dict[str, float]) -> None:
            prof.step()

    plugins = build_plugins(extra=[("bench-profiler", Profiler())])
    config = lorakit_config(args, work / "profile", max_steps=args.profile + 3)
    train(config, plugins=plugins, progress=False)
    prof.stop()
    sort = "self_cuda_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
    return str(prof.key_averages().table(sort_by=sort, row_limit=15, max_name_column_width=40))


def worker(args: argparse.Namespace) -> None:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        if args.worker == "profile":
            print(run_profile(args, Path(tmp)), flush=True)
            return
        if args.worker == "lorakit":
            result = run_lorakit(args, Path(tmp))
        else:
            result = run_trainer(args, Path(tmp), grouped=args.worker == "grouped")
    result.update(
        tokens_per_s=result["tokens"] / result["loop_s"],
        peak_mb=peak_memory_mb(),
        device="cuda" if torch.cuda.is_available() else "cpu",
    )
    print("RESULT " + json.dumps(result), flush=True)


def launch(kind: str, args: argparse.Namespace) -> dict[str, Any]:
    """One side in a fresh process; its result and the whole process's wall clock."""
    command = [
        sys.executable,
        __file__,
        "--worker",
        kind,
        "--model",
        args.model,
        "--data",
        str(args.data),
        "--batch-size",
        str(args.batch_size),
        "--epochs",
        str(args.epochs),
        "--threads",
        str(args.threads),
        "--case",
        args.case,
        "--profile",
        str(args.profile),
        "--max-seq-len",
        str(args.max_seq_len),
        "--max-steps",
        str(args.max_steps),
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")}
    start = time.perf_counter()
    out = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    wall = time.perf_counter() - start
    if kind == "profile" and out.returncode == 0:
        return {"table": out.stdout, "wall_s": wall}
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return {**json.loads(line[7:]), "wall_s": wall}
    raise SystemExit(f"{kind} run failed:\n{out.stderr[-3000:]}")


def write_long_tail(path: Path, rows: int = 600, seed: int = 0) -> Path:
    """QA rows whose answers have Pareto-tailed lengths (most one sentence, a few ~10)."""
    import math
    import random

    from lorakit_llm.testing import qa_pairs

    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as handle:
        for pair in qa_pairs(rows, seed):
            repeat = min(math.ceil(rng.paretovariate(1.6)), 12)
            answer = " ".join([pair["answer"]] * repeat)
            handle.write(json.dumps({"question": pair["question"], "answer": answer}) + "\n")
    return path


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
                messages += [
                    {"role": "user", "content": pair["question"]},
                    {"role": "assistant", "content": pair["answer"]},
                ]
            handle.write(json.dumps({"messages": messages}) + "\n")
    return path


def build_smollm2(directory: Path) -> Path:
    """SmolLM2-135M's architecture with random weights (and the test tokenizer)."""
    import torch
    from lorakit_llm.testing import build_tokenizer
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = build_tokenizer()
    config = LlamaConfig(
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        max_position_embeddings=8192,
        rope_theta=100000.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def prepare(args: argparse.Namespace, work: Path) -> None:
    from lorakit_llm.testing import build_tiny_llama

    if args.model is None:
        if args.case == "smollm2":
            args.model = str(build_smollm2(work / "smollm2-135m"))
        elif args.case == "long-tail":
            args.model = str(
                build_tiny_llama(work / "llama-256", hidden_size=256, num_layers=4, num_heads=8)
            )
        else:
            args.model = str(
                build_tiny_llama(work / "stand-in", hidden_size=args.hidden, num_layers=args.layers)
            )
    if args.data is None:
        if args.case == "throughput":
            args.data = write_conversations(work / "chat.jsonl", args.rows)
        else:
            rows = 150 if args.case == "smollm2" else 600
            args.data = write_long_tail(work / "long-tail.jsonl", rows)


def report(runs: dict[str, list[dict[str, Any]]]) -> None:
    def median(kind: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[kind])

    print()
    print(f"{'median':32s} {'wall s':>8s} {'loop s':>8s} {'tokens/s':>9s} {'peak MB':>8s}")
    for kind in KINDS:
        print(
            f"{LABELS[kind]:32s} {median(kind, 'wall_s'):8.1f} {median(kind, 'loop_s'):8.1f} "
            f"{median(kind, 'tokens_per_s'):9.1f} {median(kind, 'peak_mb'):8.0f}"
        )
    for ref in ("trainer", "grouped"):
        pairs = list(zip(runs["lorakit"], runs[ref], strict=True))
        wall = statistics.median(b["wall_s"] / a["wall_s"] for a, b in pairs)
        loop = statistics.median(a["tokens_per_s"] / b["tokens_per_s"] for a, b in pairs)
        memory = statistics.median(a["peak_mb"] / b["peak_mb"] for a, b in pairs)
        print(
            f"lorakit vs {LABELS[ref]}: speed ×{wall:.2f} whole process, ×{loop:.2f} loop tokens/s; "
            f"peak memory ×{memory:.2f} (median of {len(pairs)} paired runs)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="Model folder (default: built for the case).")
    parser.add_argument("--data", type=Path, help="QA or chat JSONL (default: synthetic).")
    parser.add_argument("--rows", type=int, default=400, help="Synthetic conversations.")
    parser.add_argument("--hidden", type=int, default=64, help="Stand-in model width.")
    parser.add_argument("--layers", type=int, default=2, help="Stand-in model depth.")
    parser.add_argument("--batch-size", type=int, default=16, help="Rows per batch (throughput).")
    parser.add_argument("--epochs", type=int, default=1, help="Epochs (smollm2).")
    parser.add_argument("--max-seq-len", type=int, default=0, help="0: the case's.")
    parser.add_argument("--max-steps", type=int, default=0, help="Stop every side after N.")
    parser.add_argument(
        "--threads", type=int, default=0, help="torch CPU threads per run (0: torch's default)."
    )
    parser.add_argument("--repeats", type=int, default=3, help="Runs of each, alternating.")
    parser.add_argument("--case", choices=tuple(CASES), default="throughput")
    parser.add_argument(
        "--profile", type=int, default=0, help="Profile N lorakit steps instead of comparing."
    )
    parser.add_argument("--worker", choices=(*KINDS, "profile"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return

    with tempfile.TemporaryDirectory() as tmp:
        prepare(args, Path(tmp))
        if args.profile:
            print(launch("profile", args)["table"])
            return
        runs: dict[str, list[dict[str, Any]]] = {kind: [] for kind in KINDS}
        for i in range(args.repeats):
            for kind in KINDS[i % 3 :] + KINDS[: i % 3]:
                r = launch(kind, args)
                runs[kind].append(r)
                print(
                    f"run {i + 1} {LABELS[kind]:32s} wall {r['wall_s']:7.1f} s  "
                    f"loop {r['loop_s']:7.1f} s  {r['tokens']:7d} tokens  {r['tokens_per_s']:8.1f} tokens/s  "
                    f"peak {r['peak_mb']:6.0f} MB  {r['steps']:4d} steps  "
                    f"loss {r['loss']:.4f}  ({r['device']})",
                    flush=True,
                )
    report(runs)


if __name__ == "__main__":
    main()
