"""Stop tokens, BOS/EOS and templates on tokenizers shaped like real model families.

Built offline: a Qwen2.5-base-like byte-level BPE (EOS ``<|endoftext|>``, turns end with the
special ``<|im_end|>``) and a Llama-2-base-like SentencePiece BPE (``<s>`` added in front of
every text, no chat template).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from lorakit_llm.chat_templates import LLAMA2, resolve_template
from lorakit_llm.generate import generate
from lorakit_llm.testing import (
    build_chain_llama,
    build_llama2_like_tokenizer,
    build_qwen_like_tokenizer,
)
from lorakit_llm.tokenize import IGNORE, tokenize_records


@pytest.fixture(scope="module")
def qwen() -> Any:
    return build_qwen_like_tokenizer()


@pytest.fixture(scope="module")
def llama2() -> Any:
    return build_llama2_like_tokenizer()


def chain_after_prompt(tokenizer: Any, template: str, answer: list[int], *tail: int) -> list[int]:
    """The prompt's last token, then the answer, then ``tail``: what the chain model says."""
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}],
        chat_template=template,
        tokenize=False,
        add_generation_prompt=True,
    )
    last = tokenizer(prompt, add_special_tokens=False)["input_ids"][-1]
    return [last, *answer, *tail]


def test_generation_stops_at_the_end_of_turn_not_only_at_eos(qwen: Any, tmp_path: Path) -> None:
    """Qwen2.5 base: EOS is <|endoftext|>, the turn ends with <|im_end|>; the model goes on
    to invent a user turn after <|im_end|>. The answer must stop at <|im_end|>."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    im_start, im_end = qwen.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"])
    paris = qwen("Paris.", add_special_tokens=False)["input_ids"]
    user = qwen("user", add_special_tokens=False)["input_ids"]
    chain = chain_after_prompt(qwen, qwen.chat_template, paris, im_end, im_start, *user)
    folder = build_chain_llama(tmp_path / "qwen-like", qwen, chain)
    model = AutoModelForCausalLM.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id != im_end
    template, _ = resolve_template(None, tokenizer)
    messages = [{"role": "user", "content": "Hi"}]
    assert generate(model, tokenizer, messages, template=template, max_new_tokens=12) == "Paris."

    # A generation config with a list of EOS ids (as Qwen2.5-Instruct ships it) stops too,
    # also on a raw prompt without a template.
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, im_start]
    raw = generate(model, tokenizer, messages, template=None, max_new_tokens=12)
    assert "user" not in raw


def test_chat_cli_stops_at_the_end_of_turn(
    qwen: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from llm_helpers import cli

    im_start, im_end = qwen.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"])
    paris = qwen("Paris.", add_special_tokens=False)["input_ids"]
    user = qwen("user", add_special_tokens=False)["input_ids"]
    chain = chain_after_prompt(qwen, qwen.chat_template, paris, im_end, im_start, *user)
    folder = build_chain_llama(tmp_path / "qwen-like", qwen, chain)
    capsys.readouterr()
    assert cli("chat", "--base", folder, "--prompt", "Hi", "--max-new-tokens", "12") == 0
    assert capsys.readouterr().out.strip() == "Paris."


def test_template_less_llama2_rows_start_with_bos_and_end_with_eos(llama2: Any) -> None:
    template, name = resolve_template(None, llama2)
    assert name == "alpaca"  # no chat template: alpaca markers + the model's own BOS/EOS
    record = {
        "kind": "chat",
        "source": "t:1",
        "messages": [
            {"role": "user", "content": "What is the capital of Peru?"},
            {"role": "assistant", "content": "Lima."},
        ],
    }
    data = tokenize_records([record], llama2, template, max_seq_len=256, train_on_inputs=False)
    ids, labels = (t.tolist() for t in data.row(0))
    assert ids[0] == llama2.bos_token_id and ids.count(llama2.bos_token_id) == 1
    targets = [t for t, label in zip(ids, labels, strict=True) if label != IGNORE]
    assert targets[-1] == llama2.eos_token_id  # the answer ends with a token generation stops on
    assert llama2.decode(targets, skip_special_tokens=True).strip() == "Lima."
    alpaca_ids = ids

    # chatml on a vocabulary without <|im_end|>: the EOS closes the answer all the same.
    chatml, _ = resolve_template("chatml", llama2)
    data = tokenize_records([record], llama2, chatml, max_seq_len=256, train_on_inputs=False)
    ids, labels = (t.tolist() for t in data.row(0))
    assert ids[0] == llama2.bos_token_id
    targets = [t for t, label in zip(ids, labels, strict=True) if label != IGNORE]
    assert targets[-1] == llama2.eos_token_id

    # The generation prompt is laid out as training laid out the rows: BOS first.
    from lorakit_llm.generate import prompt_ids, stop_ids

    prompt = prompt_ids(llama2, record["messages"][:1], template)[0].tolist()
    assert prompt[0] == llama2.bos_token_id and prompt == alpaca_ids[: len(prompt)]
    assert llama2.eos_token_id in stop_ids(None, llama2, template)


@pytest.mark.parametrize("name", ["alpaca", "zephyr", "chatml", "llama2"])
def test_builtin_templates_train_a_stop_token(llama2: Any, qwen: Any, name: str) -> None:
    for tokenizer in (llama2, qwen):
        template, _ = resolve_template(name, tokenizer)
        record = {
            "kind": "chat",
            "source": "t:1",
            "messages": [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "A."}],
        }
        data = tokenize_records(
            [record], tokenizer, template, max_seq_len=256, train_on_inputs=False
        )
        ids, labels = (t.tolist() for t in data.row(0))
        from lorakit_llm.generate import stop_ids

        targets = [t for t, label in zip(ids, labels, strict=True) if label != IGNORE]
        stops = set(stop_ids(None, tokenizer, template))
        assert any(t in stops for t in targets), (name, tokenizer.decode(targets))
        if tokenizer.bos_token_id is not None:
            assert ids[0] == tokenizer.bos_token_id and ids[1] != tokenizer.bos_token_id


def test_dict_chat_template_uses_default(qwen: Any) -> None:
    from copy import deepcopy

    tokenizer = deepcopy(qwen)
    tokenizer.chat_template = {"default": LLAMA2, "tool_use": "{{ 'tools' }}"}
    template, name = resolve_template(None, tokenizer)
    assert template == LLAMA2 and name == "model"


def test_llama2_template_strips_content_like_the_reference(llama2: Any) -> None:
    template, _ = resolve_template("llama2", llama2)
    messages = [
        {"role": "system", "content": "  Be brief. \n"},
        {"role": "user", "content": "  Hi there \n"},
        {"role": "assistant", "content": " Hello. \n"},
    ]
    text = llama2.apply_chat_template(messages, chat_template=template, tokenize=False)
    # Meta's reference: f"{B_INST} {(B_SYS + sys + E_SYS + user).strip()} {E_INST}"
    # then f" {answer.strip()} " + eos.
    assert text == "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi there [/INST] Hello. </s>"
