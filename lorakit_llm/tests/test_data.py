"""Packing and batching: a batch is batch_size examples however it is laid out; packed loss
equals unpacked loss on every layout; orders are pure functions; the probe sees real batches."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
import torch
from llm_helpers import make_backend
from lorakit_llm.data import Collator, LengthGroupedBatchSampler, pack_rows


def test_pack_rows_fills_bins_without_losing_rows() -> None:
    rng = random.Random(0)
    lengths = [rng.randint(1, 100) for _ in range(500)]
    bins = pack_rows(lengths, 128)
    assert sorted(i for b in bins for i in b) == list(range(500))
    assert all(sum(lengths[i] for i in b) <= 128 for b in bins)
    assert sum(lengths) / (128 * len(bins)) > 0.95  # nearly no padding
    assert pack_rows(lengths, 128) == bins


def test_length_grouped_sampler_is_a_function_of_seed_and_epoch() -> None:
    rng = random.Random(1)
    lengths = [rng.randint(1, 300) for _ in range(1000)]
    sampler = LengthGroupedBatchSampler(lengths, 8, seed=3)
    first = list(sampler)
    assert list(LengthGroupedBatchSampler(lengths, 8, seed=3)) == first
    assert sorted(i for b in first for i in b) == list(range(1000))
    assert len(first) == len(sampler) == 125
    sampler.set_epoch(1)
    assert list(sampler) != first
    sampler.set_epoch(0)
    assert list(sampler) == first
    # Grouping: far less padding than random batches.
    waste = sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in first)
    assert waste < 0.1 * sum(lengths)


def _randomise_lora(model: Any) -> None:
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.2)


def _per_token_loss(backend: Any, dataset: Any, *, batch_size: int, **swap: Any) -> float:
    backend.model.eval()
    total = count = 0.0
    with torch.no_grad():
        for start in range(0, len(dataset), batch_size):
            batch = backend.collate(
                [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
            )
            batch.update({k: f(batch) for k, f in swap.items()})
            total += float(backend.loss(backend.model, batch).loss_sum)
            count += backend.count(batch)
    return total / count


def _batches(backend: Any, dataset: Any, batch_size: int) -> list[dict[str, Any]]:
    sampler = backend.batch_sampler(dataset, batch_size, 0)
    return [backend.collate([dataset[i] for i in indices]) for indices in sampler]


def test_packed_batches_are_batch_size_examples_without_padding(
    assets: dict[str, Path], tmp_path: Path
) -> None:
    backend, _, dataset = make_backend(assets, tmp_path / "p", llm={"packing": True})
    assert backend.layout == "packed" and len(dataset) == 150
    padded = Collator(0, "padded")
    batches = _batches(backend, dataset, 4)
    assert len(batches) == 38  # 150 examples / 4: a step is batch_size examples
    assert sum(int(b["num_rows"]) for b in batches) == 150
    for indices in backend.batch_sampler(dataset, 4, 0):
        items = [dataset[i] for i in indices]
        packed, plain = backend.collate(items), padded(items)
        longest = max(len(item["input_ids"]) for item in items)
        # Never more attention than the padded batch: no longer rows, no more rows.
        assert packed["input_ids"].shape[1] == longest == plain["input_ids"].shape[1]
        assert packed["input_ids"].shape[0] <= plain["input_ids"].shape[0]
        assert int(packed["num_tokens"]) == sum(len(item["input_ids"]) for item in items)
    # On flash / varlen kernels the whole micro-batch is one row without padding.
    flat = Collator(0, "flat")([dataset[i] for i in range(4)])
    assert flat["input_ids"].shape == (1, sum(len(dataset[i]["input_ids"]) for i in range(4)))
    assert int((flat["position_ids"][0] == 0).sum()) == 4


def test_the_seed_case_keeps_its_step_count(assets: dict[str, Path], tmp_path: Path) -> None:
    """150 QA pairs, batch_size 4, epochs 10: about 150 / 4 · 10 optimizer steps."""
    from llm_helpers import llm_config

    from lorakit.config import load_config
    from lorakit.engine import train

    data = llm_config(
        assets, tmp_path / "seed", max_steps=None, epochs=10, batch_size=4, llm={"packing": True}
    )
    config = load_config(data=data)
    from lorakit_llm.schedule import schedule_warnings

    assert schedule_warnings(config, 150) == []
    backend, _, dataset = make_backend(assets, tmp_path / "b", llm={"packing": True})
    steps = 10 * len(backend.batch_sampler(dataset, 4, 0))
    assert steps == 380  # ≈ 375, not the handful that max_seq_len bins would give
    # Through the engine (a short run): 150 examples in batches of 50, 2 epochs = 6 steps.
    data.update(epochs=2, batch_size=50)
    result = train(load_config(data=data), progress=False)
    run = json.loads((result.output_dir / "run.json").read_text())
    assert run["total_steps"] == 6
    assert len((result.output_dir / "metrics.jsonl").read_text().splitlines()) == 6


def test_header_warns_about_few_steps_and_long_warmup(
    assets: dict[str, Path], tmp_path: Path
) -> None:
    log: list[str] = []
    make_backend(
        assets, tmp_path / "w", log=log, max_steps=None, epochs=1, batch_size=16, lr_warmup_steps=5
    )
    warnings = [line for line in log if line.startswith("warning:")]
    assert any("only 10 optimizer steps" in w for w in warnings), log
    assert any("lr_warmup_steps 5 covers more than a fifth of the 10" in w for w in warnings)
    log.clear()
    make_backend(
        assets, tmp_path / "q", log=log, max_steps=None, epochs=10, batch_size=4, lr_warmup_steps=10
    )
    assert not [line for line in log if line.startswith("warning:")], log


@pytest.mark.parametrize("layout", ["packed", "flat"])
def test_packing_gives_the_unpacked_per_token_loss(
    assets: dict[str, Path], tmp_path: Path, layout: str
) -> None:
    # Long-tailed answers, so that packed rows do hold several examples.
    from lorakit_llm.testing import qa_pairs

    rows = [
        {"question": p["question"], "answer": " ".join([p["answer"]] * (1 + 4 * (i % 5 == 0)))}
        for i, p in enumerate(qa_pairs(40))
    ]
    file = tmp_path / "tail.jsonl"
    file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    packed, _, packed_set = make_backend(
        assets, tmp_path / "p", train_data_dir=str(file), llm={"packing": True}
    )
    plain, _, plain_set = make_backend(
        assets, tmp_path / "u", train_data_dir=str(file), llm={"packing": False}
    )
    packed.collator = Collator(0, layout)
    shapes = [
        packed.collate([packed_set[i] for i in range(a, a + 8)])["input_ids"].shape
        for a in range(0, 40, 8)
    ]
    assert all(shape[0] < 8 for shape in shapes)  # examples do share rows
    assert packed.packing and packed_set.packed and not plain_set.packed
    _randomise_lora(packed.model)
    _randomise_lora(plain.model)
    targets = packed.stats["target_tokens"]
    assert targets == plain.stats["target_tokens"] > 0

    packed_loss = _per_token_loss(packed, packed_set, batch_size=8)
    plain_loss = _per_token_loss(plain, plain_set, batch_size=8)
    error = abs(packed_loss - plain_loss)
    assert error < 1e-5  # float32 rounding (about 1e-7 here)

    # The test has teeth: letting packed rows see each other changes the loss.
    leaky = _per_token_loss(
        packed,
        packed_set,
        batch_size=8,
        position_ids=lambda b: torch.arange(b["input_ids"].shape[1]).repeat(len(b["input_ids"]), 1),
    )
    assert abs(leaky - plain_loss) > max(2e-5, 100 * error)


def test_loss_never_builds_full_fp32_logits(assets: dict[str, Path], tmp_path: Path) -> None:
    from lorakit_llm.loss import chunked_cross_entropy

    backend, _, dataset = make_backend(assets, tmp_path / "ce", llm={"packing": False})
    batch = backend.collate([dataset[i] for i in range(8)])
    shapes: list[tuple[int, ...]] = []
    head = backend.model.get_output_embeddings()
    hook = head.register_forward_hook(lambda m, i, out: shapes.append(tuple(out.shape)))
    try:
        loss = backend.loss(backend.model, batch).loss_sum
    finally:
        hook.remove()
    n, length = batch["input_ids"].shape
    vocab = head.weight.shape[0]
    # Answer-only loss: the head runs on the positions that have a target, not all of them.
    assert shapes and shapes[0][0] * shapes[0][1] * vocab < n * length * vocab / 2, shapes
    with torch.no_grad():
        full = backend.model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
        ).logits
    labels = batch["labels"][:, 1:]
    mask = labels != -100
    expected = torch.nn.functional.cross_entropy(full[:, :-1][mask], labels[mask], reduction="sum")
    assert abs(float(loss.detach()) - float(expected)) < 1e-3
    # Chunked: the same sum and the same gradient as in one piece.
    logits = torch.randn(50, vocab, requires_grad=True)
    target = torch.randint(0, vocab, (50,))
    whole = torch.nn.functional.cross_entropy(logits, target, reduction="sum")
    (grad_whole,) = torch.autograd.grad(whole, logits)
    parts = chunked_cross_entropy(logits, target, chunk=7)
    (grad_parts,) = torch.autograd.grad(parts, logits)
    assert torch.allclose(parts, whole, atol=1e-4) and torch.allclose(grad_parts, grad_whole)


def test_count_is_the_number_of_target_tokens(assets: dict[str, Path], tmp_path: Path) -> None:
    backend, _, dataset = make_backend(assets, tmp_path / "c")
    batch = backend.collate([dataset[0], dataset[1]])
    shifted = batch["labels"][:, 1:]
    assert backend.count(batch) == int((shifted != -100).sum())
    assert (
        sum(backend.count(backend.collate([dataset[i]])) for i in range(len(dataset)))
        == (backend.stats["target_tokens"])
    )


def test_tokenization_is_cached(
    assets: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend, ctx, first = make_backend(assets, tmp_path / "k")
    assert not backend.stats["cached"]
    assert len(list((tmp_path / "k" / "cache").glob("tokens-*.safetensors"))) == 1

    def fail(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("tokenized twice")

    monkeypatch.setattr("lorakit_llm.backend.tokenize_records", fail)
    again = backend.dataset(ctx)
    assert backend.stats["cached"] and len(again) == len(first)
    assert torch.equal(again[0]["input_ids"], first[0]["input_ids"])
    # A setting that changes the tokens changes the key.
    backend.section = backend.section.model_copy(update={"train_on_inputs": True})
    monkeypatch.undo()
    backend.dataset(ctx)
    assert len(list((tmp_path / "k" / "cache").glob("tokens-*.safetensors"))) == 2


class _CumulativeModel(torch.nn.Module):
    """A 'model' whose every position sees every earlier token, position ids or not."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(50, 8)

    def get_input_embeddings(self) -> torch.nn.Module:
        return self.embed

    def forward(self, input_ids: torch.Tensor, **kwargs: Any) -> Any:
        hidden = self.embed(input_ids).cumsum(dim=1)
        return type("Out", (), {"logits": hidden})()


def test_packing_probe(
    assets: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lorakit_llm.packing import packing_supported

    backend, _, dataset = make_backend(assets, tmp_path / "probe")
    model = backend.model
    assert packing_supported(model, "packed") and packing_supported(model, "flat")
    assert dataset.packed
    assert not packing_supported(_CumulativeModel())

    # The probe runs the real batch shape: a model that keeps examples apart only when a
    # batch has a single row (what transformers does on flash attention) fails "packed"
    # and passes "flat".
    class OneRowOnly(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = model

        def get_input_embeddings(self) -> torch.nn.Module:
            return model.get_input_embeddings()

        def forward(self, input_ids: torch.Tensor, position_ids: Any = None, **kw: Any) -> Any:
            if input_ids.shape[0] > 1:
                position_ids = None  # ignored, as flash attention ignores it on several rows
            return self.inner(input_ids=input_ids, position_ids=position_ids, **kw)

    assert not packing_supported(OneRowOnly(), "packed")
    assert packing_supported(OneRowOnly(), "flat")

    monkeypatch.setattr("lorakit_llm.backend.packing_supported", lambda model, layout: False)
    fallback, _, plain = make_backend(assets, tmp_path / "fallback")
    assert not fallback.packing and not plain.packed and len(plain) == 150
    assert fallback.layout == "padded"
    assert isinstance(fallback.batch_sampler(plain, 4, 0), LengthGroupedBatchSampler)


def test_eval_split_holds_rows_out_of_training(assets: dict[str, Path], tmp_path: Path) -> None:
    backend, _, dataset = make_backend(assets, tmp_path / "e", llm={"eval_split": 0.05})
    held = backend.eval_set
    assert held is not None and len(held) == 8 and len(dataset) == 142
    assert not set(held.rows) & set(dataset.rows)
    again, _, _ = make_backend(assets, tmp_path / "f", llm={"eval_split": 0.05})
    assert again.eval_set.rows == held.rows  # chosen by seed
