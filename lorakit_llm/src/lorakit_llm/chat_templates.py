"""Chat templates: the model's own, a named built-in, or one the config gives.

``llm.chat_template`` is ``null`` (the model's template; ``chatml`` when it has none), the
name of a built-in below, a Jinja template string, or the path of a ``.jinja`` file.
Every built-in renders a prefix of the whole conversation when asked for the
conversation so far plus a generation prompt, which is what the answer-only loss mask
relies on. This module imports no torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lorakit.api import ConfigError

CHATML = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

ZEPHYR = (
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}{{ eos_token }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

LLAMA2 = (
    "{% if messages and messages[0]['role'] == 'system' %}"
    "{% set system = '<<SYS>>\\n' + messages[0]['content'] | trim + '\\n<</SYS>>\\n\\n' %}"
    "{% set turns = messages[1:] %}"
    "{% else %}{% set system = '' %}{% set turns = messages %}{% endif %}"
    "{% for message in turns %}"
    "{% if message['role'] == 'user' %}"
    "{{ bos_token }}[INST] {{ (system if loop.first else '') + message['content'] | trim }} [/INST]"
    "{% else %} {{ message['content'] | trim }} {{ eos_token }}{% endif %}"
    "{% endfor %}"
)

ALPACA = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] }}\n\n"
    "{% elif message['role'] == 'user' %}### Instruction:\n{{ message['content'] }}\n\n"
    "{% else %}### Response:\n{{ message['content'] }}{{ eos_token }}\n\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}### Response:\n{% endif %}"
)

BUILTIN = {"chatml": CHATML, "zephyr": ZEPHYR, "llama2": LLAMA2, "alpaca": ALPACA}
#: Text that ends an assistant turn in a built-in template, besides the eos token.
END_MARKERS = {"chatml": ("<|im_end|>",), "alpaca": ("### Instruction:",)}


def model_template(tokenizer: Any) -> str | None:
    """The tokenizer's own template; of a dict of named templates, the ``default`` one."""
    own = getattr(tokenizer, "chat_template", None)
    if isinstance(own, dict):
        own = own.get("default")
    return own if isinstance(own, str) and own.strip() else None


def resolve_template(setting: str | None, tokenizer: Any) -> tuple[str, str]:
    """``(template, name)`` for ``llm.chat_template``; name is ``model`` for the model's own.

    A model without a template (a base model such as Llama-2-7b-hf) gets ``alpaca``: plain
    text markers that every vocabulary can spell, with the tokenizer's own EOS closing each
    answer (and its BOS in front where it adds one), so the trained model stops in any
    runtime; chatml's ``<|im_end|>`` would be several plain-text tokens in such a vocabulary.
    """
    if setting is None or setting in ("auto", "model"):
        own = model_template(tokenizer)
        if own is not None:
            return own, "model"
        if setting == "model":
            raise ConfigError("the model has no chat template; name one", key="llm.chat_template")
        return ALPACA, "alpaca"
    if setting in BUILTIN:
        return BUILTIN[setting], setting
    if "{{" in setting or "{%" in setting:
        return setting, "custom"
    path = Path(setting).expanduser()
    if path.suffix == ".jinja" or path.is_file():
        if not path.is_file():
            raise ConfigError(f"file not found: {setting}", key="llm.chat_template")
        return path.read_text(encoding="utf-8"), "custom"
    names = ", ".join(BUILTIN)
    raise ConfigError(
        f"unknown template {setting!r} (built in: {names}; or a Jinja string or .jinja file)",
        key="llm.chat_template",
    )


def end_markers(template: str) -> tuple[str, ...]:
    """Strings after which generation should stop, for a template's text."""
    for name, text in BUILTIN.items():
        if template == text:
            return END_MARKERS.get(name, ())
    return ("<|im_end|>",) if "<|im_end|>" in template else ()
