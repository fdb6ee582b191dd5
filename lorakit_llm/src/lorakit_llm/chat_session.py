"""The state behind ``lorakit chat``: a base model, its adapters, and the conversation."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

from lorakit.api import UsageError
from lorakit_llm.generate import (
    COMBINED,
    AdapterRef,
    PromptStyle,
    adapter_style,
    combine_adapters,
    generate,
    use_adapter,
)

BASE = "base"


@dataclass
class ChatSession:
    """Each adapter is prompted as it was trained (template, format, system prompt, read
    from its ``lorakit.json`` and ``chat_template.jinja``); ``--chat-template`` and
    ``--system`` override that for all. The combination uses the first adapter's style."""

    model: Any
    tokenizer: Any
    refs: list[AdapterRef]
    styles: dict[str, PromptStyle]
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
        styles = {BASE: adapter_style(None, tokenizer, chat_template, system)}
        for ref in refs:
            styles[ref.name] = adapter_style(ref.path, tokenizer, chat_template, system)
        if refs:
            styles[COMBINED] = styles[refs[0].name]
        session = cls(model, tokenizer, refs, styles, max_new_tokens)
        if refs:
            session.active = refs[0].name
        return session

    @property
    def style(self) -> PromptStyle:
        return self.styles[self.active]

    @property
    def template(self) -> str | None:
        return self.style.template

    @property
    def system(self) -> str | None:
        return self.style.system

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
        self._switch(name)

    def _switch(self, name: str) -> None:
        if self.styles[name] != self.style:
            self.history = []  # another prompt format: the old turns would not fit it
        self.active = name

    def use_base(self) -> None:
        self._switch(BASE)

    def combine(self) -> None:
        if len(self.refs) < 1:
            raise UsageError("--combine needs at least one --adapter")
        combine_adapters(self.model, self.refs)
        self._switch(COMBINED)

    def reset(self) -> None:
        self.history = []

    def ask(self, prompt: str) -> str:
        """Answer ``prompt`` in the conversation so far, with the active adapter."""
        style = self.style
        messages = [{"role": "system", "content": style.system}] if style.system else []
        if style.template is None:
            messages = []  # a raw-text adapter: the prompt alone, no turns, no system
        messages += [*self.history, {"role": "user", "content": prompt}]
        off = self.refs and self.active == BASE
        guard = self.model.disable_adapter() if off else contextlib.nullcontext()
        with guard:
            answer = generate(
                self.model,
                self.tokenizer,
                messages,
                template=style.template,
                max_new_tokens=self.max_new_tokens,
            )
        if style.template is not None:
            self.history += [
                {"role": "user", "content": prompt},
                {"role": "assistant", "content": answer},
            ]
        return answer
