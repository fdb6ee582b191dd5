"""GRPO's sampling: one generate call per micro-batch, stop tokens as ``lorakit chat`` uses
them (a chatml model stops on ``<|im_end|>``), the stop token kept in the completion mask and
cut from the text the rewards see."""

from __future__ import annotations

from typing import Any

import torch


class _Scripted(torch.nn.Module):
    """A stand-in model whose ``generate`` returns scripted continuations."""

    def __init__(self, continuations: list[list[int]]) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.continuations = continuations
        self.calls: list[dict[str, Any]] = []
        self.generation_config = None

    def generate(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, generation_config: Any
    ) -> torch.Tensor:
        self.calls.append({"ids": input_ids, "mask": attention_mask, "config": generation_config})
        width = max(len(c) for c in self.continuations)
        pad = generation_config.pad_token_id
        tail = torch.tensor([c + [pad] * (width - len(c)) for c in self.continuations])
        return torch.cat([input_ids, tail], dim=1)


def test_sampling_stops_on_the_templates_end_of_turn() -> None:
    from lorakit_llm.grpo.generation import Sampling, prompt_text, sample_completions
    from lorakit_llm.testing import build_qwen_like_tokenizer

    tokenizer = build_qwen_like_tokenizer()
    template = tokenizer.chat_template
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    eos = tokenizer.eos_token_id
    lima = tokenizer("Lima.", add_special_tokens=False)["input_ids"]
    oslo = tokenizer("Oslo", add_special_tokens=False)["input_ids"]
    prompts = [
        tokenizer(
            prompt_text(tokenizer, [{"role": "user", "content": q}], template),
            add_special_tokens=False,
        )["input_ids"]
        for q in ("Capital of Peru?", "And of Norway, please?")
    ]
    assert len(prompts[0]) != len(prompts[1])
    model = _Scripted(
        [
            [*lima, im_end, oslo[0]],  # chatml's end of turn: the rest is not the answer
            [*lima, eos],
            [*oslo, *oslo],  # no stop token within max_completion_length
            [im_end],  # an empty answer
        ]
    )
    sampling = Sampling(
        num_generations=2, max_completion_length=8, temperature=0.7, top_p=0.9, top_k=5
    )
    out = sample_completions(model, tokenizer, prompts, template, sampling)
    (call,) = model.calls  # one call for both prompts' groups
    config = call["config"]
    assert (config.do_sample, config.temperature, config.top_p, config.top_k) == (True, 0.7, 0.9, 5)
    assert config.max_new_tokens == 8 and {im_end, eos} <= set(config.eos_token_id)
    ids, mask = call["ids"], call["mask"]
    assert ids.shape[0] == 4 and torch.equal(ids[0], ids[1]) and torch.equal(ids[2], ids[3])
    assert mask[0].sum() == len(prompts[0]) and mask[0, -1] == 1  # left-padded
    assert out.texts == ["Lima.", "Lima.", "OsloOslo", ""]
    n = len(lima)
    assert out.completion_mask[0].tolist()[: n + 2] == [1] * (n + 1) + [0]  # stop token kept
    assert out.completion_ids.shape[1] == 2 * len(oslo) == 8
    assert out.completion_mask[2].sum() == 8
    assert out.truncated.tolist() == [False, False, True, False]


def test_a_real_chatml_model_is_cut_at_im_end(tmp_path: Any) -> None:
    """Qwen2.5-like: EOS is <|endoftext|>, the turn ends with <|im_end|>, after which this
    model invents a user turn; sampled completions stop at <|im_end|> (as lorakit chat's)."""
    from lorakit_llm.grpo.generation import Sampling, prompt_text, sample_completions
    from lorakit_llm.testing import build_chain_llama, build_qwen_like_tokenizer
    from transformers import AutoModelForCausalLM, AutoTokenizer

    qwen = build_qwen_like_tokenizer()
    im_start, im_end = qwen.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"])
    paris = qwen("Paris.", add_special_tokens=False)["input_ids"]
    text = prompt_text(qwen, [{"role": "user", "content": "Hi"}], qwen.chat_template)
    last = qwen(text, add_special_tokens=False)["input_ids"][-1]
    user = qwen("user", add_special_tokens=False)["input_ids"]
    folder = build_chain_llama(tmp_path / "qwen", qwen, [last, *paris, im_end, im_start, *user])
    model = AutoModelForCausalLM.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    torch.manual_seed(0)
    out = sample_completions(
        model,
        tokenizer,
        [ids],
        tokenizer.chat_template,
        Sampling(num_generations=3, max_completion_length=12, top_k=1),
    )
    assert out.texts == ["Paris."] * 3
    assert out.completion_mask.sum(dim=1).tolist() == [len(paris) + 1] * 3  # + <|im_end|>
    assert not out.truncated.any()
