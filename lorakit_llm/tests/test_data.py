"""Packing and batching: packed loss equals unpacked loss; orders are pure functions."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
import torch
from llm_helpers import make_backend
from lorakit_llm.data import LengthGroupedBatchSampler, pack_rows


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


def test_packing_gives_the_unpacked_per_token_loss(assets: dict[str, Path], tmp_path: Path) -> None:
    packed, _, packed_set = make_backend(assets, tmp_path / "p", llm={"packing": True})
    plain, _, plain_set = make_backend(assets, tmp_path / "u", llm={"packing": False})
    assert packed.packing and packed_set.packed and not plain_set.packed
    assert len(packed_set) < len(plain_set) == 150
    _randomise_lora(packed.model)
    _randomise_lora(plain.model)
    targets = packed.stats["target_tokens"]
    assert targets == plain.stats["target_tokens"] > 0

    packed_loss = _per_token_loss(packed, packed_set, batch_size=4)
    plain_loss = _per_token_loss(plain, plain_set, batch_size=8)
    error = abs(packed_loss - plain_loss)
    assert error < 1e-5  # float32 rounding (about 1e-7 here)

    # The test has teeth: letting packed rows see each other changes the loss.
    leaky = _per_token_loss(
        packed, packed_set, batch_size=4,
        position_ids=lambda b: torch.arange(b["input_ids"].shape[1]).repeat(len(b["input_ids"]), 1),
    )  # fmt: skip
    assert abs(leaky - plain_loss) > max(1e-4, 100 * error)


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
    from lorakit_llm.backend import packing_supported

    backend, _, dataset = make_backend(assets, tmp_path / "probe")
    assert packing_supported(backend.model) and dataset.packed
    assert not packing_supported(_CumulativeModel())

    monkeypatch.setattr("lorakit_llm.backend.packing_supported", lambda model: False)
    fallback, _, plain = make_backend(assets, tmp_path / "fallback")
    assert not fallback.packing and not plain.packed and len(plain) == 150
    assert isinstance(fallback.batch_sampler(plain, 4, 0), LengthGroupedBatchSampler)
