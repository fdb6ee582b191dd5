"""Helpers of tests/test_plan.py: configs for tiny models, and the real step's peak."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

LLAMA = {
    "model_type": "llama", "hidden_size": 128, "intermediate_size": 256,
    "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 2,
    "vocab_size": 512, "max_position_embeddings": 1024, "tie_word_embeddings": False,
}  # fmt: skip


def write_config(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def llm_config(tmp: Path, base: str, **keys: Any) -> dict[str, Any]:
    data = tmp / "text"
    if not data.exists():
        data.mkdir(parents=True)
        # Short rows, as QA pairs are: packing puts several into each sequence.
        rows = [" ".join(f"word{(i * 7 + j) % 97}" for j in range(5)) for i in range(300)]
        (data / "train.jsonl").write_text(
            "".join(json.dumps({"text": row}) + "\n" for row in rows), encoding="utf-8"
        )
    section = {"max_seq_len": 256, "train_on_inputs": True, "dataset_format": "text"}
    section.update(keys.pop("llm", {}))
    return {
        "task_type": "text-generation", "base_model": base,
        "train_data_dir": str(data / "train.jsonl"), "output_dir": str(tmp / "run"),
        "lora_rank": 8, "batch_size": 4, "mixed_precision": "no", "trackers": [],
        "llm": section, **keys,
    }  # fmt: skip


def real_peak(config: Any, tmp: Path) -> int:
    """Peak bytes of a real optimizer step (the second: Adam's state exists), measured with
    torch's memory tracker on real tensors: the backend's own setup, data, batch and loss."""
    import torch
    from accelerate import Accelerator

    from lorakit.api import TrainContext, get_registries
    from lorakit.planning.estimate import memory_tracker, peak_of

    registries = get_registries()
    backend = registries.backends.get(config.backend).factory(config)
    ctx = TrainContext(
        config=config, accelerator=Accelerator(cpu=True), output_dir=tmp / "out",
        cache_dir=tmp / "cache", registries=registries, weight_dtype=torch.float32,
        log=lambda *a, **k: None,
    )  # fmt: skip
    backend.validate(ctx)
    backend.setup(ctx)
    dataset = backend.dataset(ctx)
    module = backend.trainable_module()
    module.train()  # as the engine does
    size = config.train.batch_size
    sampler = backend.batch_sampler(dataset, size, 0)
    indices = next(iter(sampler)) if sampler is not None else list(range(size))
    assert len(indices) == size
    batch = backend.collate([dataset[i] for i in indices])
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    peak = 0
    for _ in range(2):
        tracker = memory_tracker()
        tracker.track_external(module, optimizer)
        with tracker:
            backend.loss(module, batch).loss_sum.backward()
            optimizer.step()
            optimizer.zero_grad()
        peak = peak_of(tracker)[0]
    backend.teardown()
    return peak
