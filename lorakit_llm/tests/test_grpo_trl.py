"""GRPO against TRL's GRPOTrainer: the same tiny model, prompts and (fixed) completions give
TRL's loss, KL and clip ratios and its LoRA gradient, for every loss type; TRL computes its
own per-token log-probs (its forward, temperature and reference pass) and its loss."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from llm_helpers import make_backend
from pref_helpers import write_jsonl

pytest.importorskip("trl")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

PROMPTS = ["What is the adult dose of aspirin?", "Name a drug for pain.", "Is ice cold?"]
#: (loss_type, beta, epsilon, epsilon_high, num_iterations, scale_rewards, bias-corrected KL)
CASES = [
    ("grpo", 0.04, 0.2, None, 1, "group", True),
    ("bnpo", 0.0, 0.2, 0.28, 2, "group", True),
    ("dr_grpo", 0.1, 0.1, None, 2, "none", True),
    ("dapo", 0.04, 0.2, 0.28, 2, "batch", True),
    ("grpo", 0.2, 0.2, None, 2, "group", False),
]


def _perturb(models: list[Any], seed: int, scale: float) -> None:
    """The same random change of every LoRA tensor of each model."""
    with torch.no_grad():
        for name, param in models[0].named_parameters():
            if "lora_" not in name:
                continue
            generator = torch.Generator().manual_seed(seed + sum(map(ord, name)))
            delta = torch.randn(param.shape, generator=generator) * scale
            for model in models:
                dict(model.named_parameters())[name].add_(delta)


def _completions(method: Any, rows: list[int], n: int) -> Any:
    """Fixed completions: random tokens, each row stopping at a different length."""
    from lorakit_llm.grpo.generation import Generated, left_pad

    tokenizer = method.backend.tokenizer
    prompt_ids, prompt_mask = left_pad([method.prompts[r] for r in rows for _ in range(n)], 0)
    generator = torch.Generator().manual_seed(3)
    width = 6
    ids = torch.randint(5, len(tokenizer) - 1, (len(prompt_ids), width), generator=generator)
    mask = torch.zeros_like(ids)
    for i in range(len(ids)):
        mask[i, : 2 + i % (width - 1)] = 1
    texts = [tokenizer.decode(row[m.bool()]) for row, m in zip(ids, mask, strict=True)]
    return Generated(prompt_ids, prompt_mask, ids * mask, mask, texts, mask[:, -1].bool())


@pytest.fixture(scope="module")
def qwen_like(assets: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Llama with a Qwen2.5-like tokenizer: chatml, no BOS, pad = EOS = <|endoftext|>."""
    import shutil

    from lorakit_llm.testing import build_qwen_like_tokenizer
    from transformers import AutoConfig

    folder = tmp_path_factory.mktemp("qwen-like") / "model"
    shutil.copytree(assets["model"], folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (folder / name).unlink(missing_ok=True)
    tokenizer = build_qwen_like_tokenizer()
    config = AutoConfig.from_pretrained(folder)
    assert len(tokenizer) <= config.vocab_size
    config.bos_token_id, config.eos_token_id = None, tokenizer.eos_token_id
    config.pad_token_id = tokenizer.pad_token_id
    config.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


TOKENIZER_CASES = [("llama", c) for c in CASES] + [("qwen", CASES[0]), ("qwen", CASES[3])]


@pytest.mark.parametrize(
    ("kind", "case"),
    TOKENIZER_CASES,
    ids=[f"{k}-{c[0]}-kl{'' if c[6] else '-plain'}" for k, c in TOKENIZER_CASES],
)
def test_grpo_loss_and_gradient_match_trl(
    assets: dict[str, Path],
    tmp_path: Path,
    kind: str,
    case: tuple[Any, ...],
    request: pytest.FixtureRequest,
) -> None:
    from trl import GRPOConfig, GRPOTrainer

    loss_type, beta, epsilon, epsilon_high, iterations, scale, corrected = case
    n, temperature = 4, 0.7
    model_dir = assets["model"] if kind == "llama" else request.getfixturevalue("qwen_like")
    data = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": p} for p in PROMPTS])
    backend, _, _ = make_backend(
        {"model": model_dir, "qa": data},
        tmp_path / "out",
        lora_dropout=0.0,
        llm={
            "method": "grpo",
            "rewards": ["length"],
            "reward_options": {"length": {"target": 12}},
            "num_generations": n,
            "max_completion_length": 6,
            "temperature": temperature,
            "beta": beta,
            "epsilon": epsilon,
            "epsilon_high": epsilon_high,
            "num_iterations": iterations,
            "loss_type": loss_type,
            "scale_rewards": scale,
            "use_bias_correction_kl": corrected,
        },
    )
    method, model = backend.method, backend.model
    assert ("<|im_start|>user" in method.texts[0]) == (kind == "qwen")  # chatml, no BOS
    _perturb([model], 1, 0.3)  # the policy differs from the reference (the base)
    twin = copy.deepcopy(model)
    rows = [0, 1]
    rollout = method.make_rollout(rows, _completions(method, rows, n))
    assert rollout.advantages.abs().sum() > 0  # the length reward tells completions apart
    if iterations > 1:  # the policy moved since it sampled: ratios leave 1 and clip
        _perturb([model, twin], 2, 0.5)

    batch = {"rows": torch.tensor(rows), "rollout": rollout}
    out = method.loss(model, batch)
    loss = out.loss_sum / method.count(batch)
    loss.backward()
    grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.requires_grad}
    ours = method.step_metrics(1, 1)

    args = GRPOConfig(
        output_dir=str(tmp_path / "trl"),
        per_device_train_batch_size=len(rows) * n,
        num_generations=n,
        max_completion_length=6,
        temperature=temperature,
        beta=beta,
        epsilon=epsilon,
        epsilon_high=epsilon_high,
        num_iterations=iterations,
        loss_type=loss_type,
        scale_rewards=scale,
        use_bias_correction_kl=corrected,
        report_to=[],
        use_cpu=True,
        gradient_checkpointing=False,
        dataloader_num_workers=0,
        logging_steps=1,
        bf16=False,
    )
    from datasets import Dataset

    trainer = GRPOTrainer(
        model=twin,
        reward_funcs=[lambda completions, **_: [0.0] * len(completions)],
        args=args,
        train_dataset=Dataset.from_dict({"prompt": PROMPTS}),
        processing_class=backend.tokenizer,
    )
    g = rollout.generated
    inputs: dict[str, Any] = {
        "prompt_ids": g.prompt_ids,
        "prompt_mask": g.prompt_mask,
        "completion_ids": g.completion_ids,
        "completion_mask": g.completion_mask,
        "advantages": rollout.advantages,
        "num_items_in_batch": g.completion_mask.sum(),
    }
    ids = torch.cat([g.prompt_ids, g.completion_ids], 1)
    attention = torch.cat([g.prompt_mask, g.completion_mask], 1)
    width = g.completion_ids.shape[1]
    with torch.no_grad():
        if beta:
            with trainer.model.disable_adapter():
                ref, *_ = trainer._get_per_token_logps_and_entropies(
                    trainer.model, ids, attention, width
                )
            inputs["ref_per_token_logps"] = ref
            kept = g.completion_mask.bool()  # TRL scores only the completion's tokens
            torch.testing.assert_close(rollout.ref_logps[kept], ref[kept], atol=1e-5, rtol=1e-5)
    if iterations > 1:
        # π_old: the policy that sampled, i.e. lorakit's weights before the second change
        inputs["old_per_token_logps"] = rollout.old_logps
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1
    theirs = trainer.compute_loss(trainer.model, inputs)
    theirs.backward()
    logged = {k: sum(v) / len(v) for k, v in trainer._metrics["train"].items() if v}

    assert float(loss.detach()) == pytest.approx(float(theirs.detach()), abs=1e-4, rel=1e-4)
    for key in (
        "clip_ratio/low_mean",
        "clip_ratio/high_mean",
        "clip_ratio/region_mean",
        *(("kl",) if beta else ()),
    ):
        assert ours[key] == pytest.approx(logged[key], abs=1e-4), key
    if iterations > 1:
        assert ours["clip_ratio/region_mean"] > 0  # the clipped branch is exercised
    theirs_grads = {k: p.grad for k, p in trainer.model.named_parameters() if p.requires_grad}
    assert grads.keys() == theirs_grads.keys() and grads
    top = max(float(v.abs().max()) for v in theirs_grads.values())
    assert top > 1e-6
    for key, grad in grads.items():
        torch.testing.assert_close(grad, theirs_grads[key], atol=1e-4 * max(top, 1.0), rtol=1e-4)


def test_old_logps_are_the_sampling_policy(assets: dict[str, Path], tmp_path: Path) -> None:
    """With num_iterations 2, π_old is the policy's log-prob at sampling time, TRL's way
    (its forward on prompt + completion at the sampling temperature)."""
    from lorakit_llm.grpo.generation import completion_logps

    data = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": p} for p in PROMPTS])
    backend, _, _ = make_backend(
        {"model": assets["model"], "qa": data},
        tmp_path / "out",
        lora_dropout=0.0,
        llm={
            "method": "grpo",
            "rewards": ["length"],
            "num_generations": 2,
            "max_completion_length": 6,
            "temperature": 0.5,
            "num_iterations": 2,
        },
    )
    method = backend.method
    rollout = method.make_rollout([2], _completions(method, [2], 2))
    g = rollout.generated
    again = completion_logps(
        backend.model, g.prompt_ids, g.prompt_mask, g.completion_ids, g.completion_mask, 0.5
    )
    torch.testing.assert_close(rollout.old_logps, again.detach())
    assert rollout.ref_logps is None  # beta 0: no reference pass


def test_the_reference_is_the_frozen_init_adapter(
    assets: dict[str, Path], trained: dict[str, Any], tmp_path: Path
) -> None:
    """GRPO from an SFT adapter with beta: the reference is that adapter, frozen in a second
    slot (no second model), so the first step's KL is 0 although the policy is not the base."""
    data = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": p} for p in PROMPTS])
    log: list[str] = []
    backend, _, _ = make_backend(
        {"model": assets["model"], "qa": data},
        tmp_path / "out",
        log=log,
        init_adapter=str(trained["output"]),
        llm={
            "method": "grpo",
            "rewards": ["length"],
            "num_generations": 2,
            "beta": 0.1,
            "max_completion_length": 6,
        },
    )
    assert "KL beta 0.1 to the init_adapter kept frozen" in "\n".join(log)
    assert sorted(backend.model.peft_config) == ["default", "reference"]
    method = backend.method
    rollout = method.make_rollout([0, 1], _completions(method, [0, 1], 2))
    batch = {"rows": torch.tensor([0, 1]), "rollout": rollout}
    method.loss(backend.model, batch).loss_sum.backward()
    assert method.step_metrics(1, 1)["kl"] == pytest.approx(0.0, abs=1e-7)
    g, kept = rollout.generated, rollout.generated.completion_mask.bool()
    from lorakit_llm.grpo.generation import completion_logps

    with torch.no_grad(), backend.model.disable_adapter():
        base = completion_logps(
            backend.model, g.prompt_ids, g.prompt_mask, g.completion_ids, g.completion_mask
        )
    assert not torch.allclose(base[kept], rollout.ref_logps[kept], atol=1e-3)
    grads = [p.grad for n, p in backend.model.named_parameters() if ".reference." in n]
    assert grads and all(g is None for g in grads)  # the reference stays frozen
