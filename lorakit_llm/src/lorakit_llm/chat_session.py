"""The state behind ``lorakit chat``: a base model, its adapters, and the conversation."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

from lorakit.api import UsageError
from lorakit_llm.chat_templates import resolve_template
from lorakit_llm.generate import (
    COMBINED,
    AdapterRef,
    adapter_format,
    adapter_template,
    combine_adapters,
    generate,
    use_adapter,
)

BASE = "base"


@dataclass
class ChatSession:
    model: Any
    tokenizer: Any
    refs: list[AdapterRef]
    template: str | None
    system: str | None = None
    max_new_tokens: int = 256
    active: str = BASE
    history: list[dict[str, str]] = field(default_factory=list)

    @classmethod
    def open(
        cls,
        base: str,
        loras: list[tuple[str, float]],
        *,
        dtype: str = "auto",
        chat_template: str | None = None,
        system: str | None = None,
        max_new_tokens: int = 256,
    ) -> ChatSession:
        from lorakit_llm.export import load_for_inference

        model, tokenizer, refs = load_for_inference(base, loras, dtype)
        saved = adapter_template(refs[0].path) if refs else None
        template: str | None
        if chat_template is None and saved:
            template = saved
        else:
            template, _ = resolve_template(chat_template, tokenizer)
        if refs and adapter_format(refs[0].path) in ("prompt_completion", "text"):
            template = None  # trained on raw text: prompt it the same way
        session = cls(model, tokenizer, refs, template, system, max_new_tokens)
        if refs:
            session.active = refs[0].name
        return session

    def describe(self) -> str:
        if not self.refs:
            return "no adapters"
        names = ", ".join(f"{r.name} ({r.weight:g})" for r in self.refs)
        return f"adapters: {names}; active: {self.active}"

    def use(self, name: str) -> None:
        if name == BASE:
            self.use_base()
            return
        if not self.refs:
            raise UsageError("no adapters loaded")
        use_adapter(self.model, name)
        self.active = name

    def use_base(self) -> None:
        self.active = BASE

    def combine(self) -> None:
        if len(self.refs) < 1:
            raise UsageError("--combine needs at least one --adapter")
        combine_adapters(self.model, self.refs)
        self.active = COMBINED

    def reset(self) -> None:
        self.history = []

    def ask(self, prompt: str) -> str:
        """Answer ``prompt`` in the conversation so far, with the active adapter."""
        messages = [{"role": "system", "content": self.system}] if self.system else []
        messages += [*self.history, {"role": "user", "content": prompt}]
        off = self.refs and self.active == BASE
        guard = self.model.disable_adapter() if off else contextlib.nullcontext()
        with guard:
            answer = generate(
                self.model, self.tokenizer, messages, template=self.template,
                max_new_tokens=self.max_new_tokens,
            )  # fmt: skip
        if self.template is not None:
            self.history += [{"role": "user", "content": prompt},
                             {"role": "assistant", "content": answer}]  # fmt: skip
        return answer
