"""What Qwen-Image and Z-Image share: one LLM caption encoder (Qwen2.5-VL, Qwen3) that never
takes LoRA, captions of their own lengths cached padded with a mask, the transformer alone
trained, and LoRA files in a kohya-style layout of diffusers' module paths.

A caption's embedding has as many rows as it has tokens. The text cache keeps as many rows
per caption as the dataset's longest caption has (at most ``sd.max_sequence_length``; zeros
past a caption's end) as ``hidden`` and its mask as the second cached tensor (``pooled``); the family's ``denoise`` hands the transformer each
caption as its pipeline does.
"""

from __future__ import annotations

from typing import Any, ClassVar

from lorakit.api import ConfigError
from lorakit_sd.families.base import Objective
from lorakit_sd.families.flow import FlowMatchObjective
from lorakit_sd.families.transformer import FlowFamily

#: kohya-style tensors of one module
SUFFIXES = (".lora_down.weight", ".lora_up.weight", ".alpha")


class LLMCaptionFamily(FlowFamily):
    """A flow transformer family captioned by one LLM (``pipe.text_encoder``)."""

    kohya_text_prefixes: ClassVar[dict[str, str]] = {}
    diffusers_text_prefixes: ClassVar[dict[str, str]] = {}
    latent_multiple = 2  # 2x2 patches
    default_sequence_length = 512
    #: the transformer config's key for the caption embedding width (``lorakit plan``)
    caption_width_key: ClassVar[str] = "joint_attention_dim"

    def check_section(self, sec: Any) -> None:
        """Also refuse ``sd.train_text_encoder``: the LLM takes no LoRA."""
        super().check_section(sec)
        if sec.train_text_encoder:
            raise ConfigError(
                f"{self.label}'s {self.sequence_encoder} text encoder takes no LoRA: "
                "sd.train_text_encoder does not apply (remove it)",
                key="sd.train_text_encoder",
            )

    def caption_length(self, pipe: Any, caption: str) -> int:  # pragma: no cover - interface
        """How many embedding rows the pipeline's ``encode_prompt`` gives ``caption``."""
        raise NotImplementedError

    def max_tokens(self, items: list[Any], pipe: Any, sec: Any, log: Any) -> int:
        """The longest caption's embedding length (the empty caption's included), at most
        ``sd.max_sequence_length`` (default 512): the cache keeps no rows nobody reads."""
        limit = self.sequence_length(pipe, sec)
        lengths = {
            item.where or item.image: self.caption_length(pipe, item.caption) for item in items
        }
        cut = [where for where, n in lengths.items() if n > limit]
        if cut:
            log(
                f"warning: {len(cut)} caption(s) are longer than {limit} {self.sequence_encoder} "
                f"tokens and are cut (sd.max_sequence_length): {', '.join(cut[:3])}"
            )
        return min(limit, max([self.caption_length(pipe, ""), *lengths.values()]))

    def transformer_class(self) -> Any:  # pragma: no cover - interface
        raise NotImplementedError

    def standard_structure(self, entries: dict[str, Any] | None = None) -> tuple[Any, list[Any]]:
        """The released transformer (its class's defaults), on the meta device."""
        import torch

        with torch.device("meta"):
            return self.transformer_class()(), []

    def text_encoders(self, pipe: Any) -> list[Any]:
        return []  # the LLM takes no LoRA

    def tokenizers(self, pipe: Any) -> list[Any]:
        return [pipe.tokenizer]

    def t5(self, pipe: Any) -> tuple[Any, Any]:
        return pipe.tokenizer, pipe.text_encoder

    def objective(self, pipe: Any, sec: Any) -> Objective:
        """Flow matching on the scheduler's config; a dynamic shift counts 2x2 patches."""
        return FlowMatchObjective(pipe, sec, tokens_per_latent=0.25)

    def plan_text_inputs(self, t_config: Any, batch: int, tokens: int) -> dict[str, Any]:
        import torch

        width = int(t_config[self.caption_width_key])
        return {"hidden": torch.randn(batch, tokens, width), "pooled": torch.ones(batch, tokens)}

    def kohya_stem(self, path: str) -> str:  # pragma: no cover - interface
        """The kohya-style key stem of a transformer module."""
        raise NotImplementedError

    def kohya_tensors(self, modules: list[Any], denoiser: Any, dtype: Any) -> dict | None:
        """``<stem>.lora_down.weight`` / ``.lora_up.weight`` / ``.alpha`` per module."""
        import torch

        out: dict[str, Any] = {}
        for m in modules:
            if m.component != "transformer":
                raise ValueError(f"{self.label} files adapt the transformer only")
            stem = self.kohya_stem(m.path)
            down, up = (t.detach().to("cpu", dtype).contiguous() for t in (m.down, m.up))
            out[stem + SUFFIXES[0]], out[stem + SUFFIXES[1]] = down, up
            out[stem + SUFFIXES[2]] = torch.tensor(float(m.alpha), dtype=dtype)
        return out


def padded(embeds: list[Any], length: int) -> tuple[Any, Any]:
    """Captions' embeddings (``[tokens_i, D]`` each) as ``[B, length, D]`` and their mask."""
    import torch

    hidden = embeds[0].new_zeros(len(embeds), length, embeds[0].shape[-1])
    mask = torch.zeros(len(embeds), length, device=hidden.device)
    for i, e in enumerate(embeds):
        hidden[i, : e.shape[0]] = e[:length]
        mask[i, : e.shape[0]] = 1.0
    return hidden, mask
