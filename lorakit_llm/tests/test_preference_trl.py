"""DPO, ORPO and SimPO against TRL: the same tiny model, pairs and β give TRL's first-step
loss, reward metrics and LoRA gradient (TRL's own tokenization, forward and loss)."""

from __future__ import annotations

import copy
import math
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from llm_helpers import make_backend
from pref_helpers import preference_rows, write_jsonl

pytest.importorskip("trl")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # ORPO and CPO live in trl.experimental

#: A template whose assistant turn ends with the EOS and nothing after it, so TRL's completion
#: (rendered conversation minus the rendered prompt) is exactly lorakit's answer span.
TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|{{ message['role'] }}|>\n"
    "{{ message['content'] }}{% if message['role'] == 'assistant' %}{{ eos_token }}"
    "{% else %}\n{% endif %}{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
METRICS = (
    "rewards/chosen",
    "rewards/rejected",
    "rewards/accuracies",
    "rewards/margins",
    "logps/chosen",
    "logps/rejected",
)


@pytest.fixture(scope="module")
def pairs(assets: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("pref-trl")
    rows = preference_rows(4, conversational=True)
    return {"root": root, "rows": rows, "data": write_jsonl(root / "pairs.jsonl", rows)}


def _ours(
    assets: dict[str, Path],
    pairs: dict[str, Any],
    name: str,
    n: int,
    perturb: bool = True,
    init_adapter: Any = None,
    **llm: Any,
):
    """lorakit's backend on the first ``n`` pairs, LoRA B set to small random values (so the
    policy differs from the reference): ``(backend, mean loss, metrics, gradients)``."""
    data = write_jsonl(pairs["root"] / name / "pairs.jsonl", pairs["rows"][:n])
    backend, _, dataset = make_backend(
        {"model": assets["model"], "qa": data},
        pairs["root"] / name / "out",
        batch_size=n,
        llm={"chat_template": TEMPLATE, **llm},
        init_adapter=init_adapter,
    )
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        if not perturb:
            generator = None
        for param_name, param in backend.model.named_parameters():
            if "lora_B" in param_name and generator is not None:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
    twin = copy.deepcopy(backend.model)  # TRL gets the same weights, untouched by our forward
    batch = backend.collate([dataset[i] for i in range(len(dataset))])
    out = backend.loss(backend.model, batch)
    loss = out.loss_sum / backend.count(batch)
    loss.backward()
    loss = loss.detach()
    grads = {k: p.grad.clone() for k, p in backend.model.named_parameters() if p.requires_grad}
    metrics = backend.step_metrics(1, 1)
    return twin, backend.tokenizer, float(loss), metrics, grads


def _trl_args(cls: Any, root: Path, n: int, **kwargs: Any) -> Any:
    return cls(
        output_dir=str(root),
        per_device_train_batch_size=n,
        report_to=[],
        use_cpu=True,
        gradient_checkpointing=False,
        dataloader_num_workers=0,
        remove_unused_columns=False,
        **kwargs,
    )


def _grads(model: Any) -> dict[str, torch.Tensor]:
    return {
        k: p.grad.clone()
        for k, p in model.named_parameters()
        if p.requires_grad and ".default." in k
    }


def _same(ours: dict[str, Any], theirs: dict[str, Any], keys: Any) -> None:
    for key in keys:
        assert ours[key] == pytest.approx(theirs[key], abs=1e-4, rel=1e-4), key


def _same_grads(ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor]) -> None:
    assert ours.keys() == theirs.keys() and ours
    scale = max(float(g.abs().max()) for g in theirs.values())
    assert scale > 1e-6  # the gradient is not trivially zero
    for key, grad in ours.items():
        torch.testing.assert_close(grad, theirs[key], atol=1e-4 * max(scale, 1.0), rtol=1e-4)


def _dataset(model: Any, tokenizer: Any, rows: list[dict[str, Any]]) -> Any:
    from datasets import Dataset

    tokenizer.chat_template = TEMPLATE
    return Dataset.from_list(rows)


@pytest.mark.parametrize("kind", ["sigmoid", "ipo"])
def test_dpo_matches_trl(assets: dict[str, Path], pairs: dict[str, Any], kind: str) -> None:
    from trl import DPOConfig, DPOTrainer

    twin, tokenizer, loss, metrics, grads = _ours(
        assets, pairs, f"dpo-{kind}", 4, method="dpo", dpo_loss=kind
    )
    # TRL's reference for a LoRA it adds itself is the base with the adapter disabled (as
    # lorakit's without init_adapter); the adapter then gets lorakit's weights.
    lora = {k: v.detach().clone() for k, v in twin.named_parameters() if "lora_" in k}
    trainer = DPOTrainer(
        model=twin.unload(),
        args=_trl_args(DPOConfig, pairs["root"] / f"trl-dpo-{kind}", 4, beta=0.1, loss_type=kind),
        train_dataset=_dataset(twin, tokenizer, pairs["rows"]),
        processing_class=tokenizer,
        peft_config=copy.deepcopy(twin.peft_config["default"]),
    )
    with torch.no_grad():
        for name, param in trainer.model.named_parameters():
            if "lora_" in name:
                param.copy_(lora[name])
    assert "ref" not in trainer.model.peft_config
    batch = next(iter(trainer.get_train_dataloader()))
    theirs = trainer.compute_loss(trainer.model, batch)
    theirs.backward()
    logged = {k: sum(v) / len(v) for k, v in trainer._metrics["train"].items() if v}
    assert loss == pytest.approx(float(theirs.detach()), abs=1e-4)
    assert loss != pytest.approx(math.log(2), abs=1e-3)  # policy and reference differ
    _same(metrics, logged, METRICS)
    _same_grads(grads, _grads(trainer.model))


def test_dpo_from_an_init_adapter_matches_trl_retraining_an_adapter(
    assets: dict[str, Path], pairs: dict[str, Any], trained: dict[str, Any]
) -> None:
    """An existing adapter: TRL copies it into a frozen "ref" adapter; lorakit keeps
    init_adapter frozen in its "reference" slot. Same loss (log 2) and gradient."""
    from trl import DPOConfig, DPOTrainer

    twin, tokenizer, loss, metrics, grads = _ours(
        assets,
        pairs,
        "dpo-init",
        4,
        perturb=False,
        init_adapter=str(trained["output"]),
        method="dpo",
    )
    twin.delete_adapter("reference")
    trainer = DPOTrainer(
        model=twin,
        args=_trl_args(DPOConfig, pairs["root"] / "trl-dpo-init", 4, beta=0.1),
        train_dataset=_dataset(twin, tokenizer, pairs["rows"]),
        processing_class=tokenizer,
    )
    assert "ref" in trainer.model.peft_config
    batch = next(iter(trainer.get_train_dataloader()))
    theirs = trainer.compute_loss(trainer.model, batch)
    theirs.backward()
    assert loss == pytest.approx(math.log(2), abs=1e-6) and float(theirs.detach()) == pytest.approx(
        loss
    )
    _same_grads(grads, _grads(trainer.model))


def test_orpo_matches_trl(assets: dict[str, Path], pairs: dict[str, Any]) -> None:
    """TRL's log-probs (its tokenization, forward, ``get_batch_logps``) and its odds-ratio
    loss; the NLL term on the chosen answer's tokens, as the ORPO paper writes it
    (``-log P(y_w | x)``; TRL's trainer puts the prompt tokens into its NLL too)."""
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    twin, tokenizer, loss, metrics, grads = _ours(assets, pairs, "orpo", 4, method="orpo", beta=0.2)
    trainer = ORPOTrainer(
        model=twin,
        args=_trl_args(ORPOConfig, pairs["root"] / "trl-orpo", 4, beta=0.2),
        train_dataset=_dataset(twin, tokenizer, pairs["rows"]),
        processing_class=tokenizer,
    )
    batch = next(iter(trainer.get_train_dataloader()))
    chosen, rejected, *_ = trainer.concatenated_forward(trainer.model, batch)
    ratio, good, bad, _, _ = trainer.odds_ratio_loss(chosen, rejected)
    theirs = (-chosen - ratio).mean()
    theirs.backward()
    logged = {
        "rewards/chosen": float(good.mean()),
        "rewards/rejected": float(bad.mean()),
        "rewards/accuracies": float((good > bad).float().mean()),
        "rewards/margins": float((good - bad).mean()),
        "logps/chosen": float(chosen.detach().mean()),
        "logps/rejected": float(rejected.detach().mean()),
    }
    assert loss == pytest.approx(float(theirs.detach()), abs=1e-4)
    _same(metrics, logged, METRICS)
    _same_grads(grads, _grads(trainer.model))


def test_simpo_matches_trl_cpo(assets: dict[str, Path], pairs: dict[str, Any]) -> None:
    from trl.experimental.cpo import CPOConfig, CPOTrainer

    twin, tokenizer, loss, metrics, grads = _ours(
        assets, pairs, "simpo", 4, method="simpo", beta=2.0, gamma=0.5
    )
    args = _trl_args(
        CPOConfig,
        pairs["root"] / "trl-simpo",
        4,
        loss_type="simpo",
        beta=2.0,
        simpo_gamma=0.5,
        cpo_alpha=0.0,
    )
    trainer = CPOTrainer(
        model=twin,
        args=args,
        train_dataset=_dataset(twin, tokenizer, pairs["rows"]),
        processing_class=tokenizer,
    )
    batch = next(iter(trainer.get_train_dataloader()))
    theirs, logged = trainer.get_batch_loss_metrics(trainer.model, batch)
    theirs.backward()
    assert loss == pytest.approx(float(theirs.detach()), abs=1e-4)
    _same(metrics, logged, METRICS)
    _same_grads(grads, _grads(trainer.model))
