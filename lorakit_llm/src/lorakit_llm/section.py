"""The ``llm:`` config section: text-specific settings, validated like the core's keys.

This module imports only pydantic, so ``lorakit config validate`` and ``lorakit --help``
stay fast. Every field is documented in docs/llm.md.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class LLMSection(BaseModel):
    """Settings of the causal-LM backend (``llm:`` in the config)."""

    model_config = ConfigDict(extra="forbid")
    #: Keys a resumed run may change: they change speed, not what the run learns.
    resumable_keys: ClassVar[frozenset[str]] = frozenset({"kernels"})

    max_seq_len: int = Field(
        2048, gt=8, description="Longest sequence in tokens; longer rows are truncated."
    )
    packing: bool = Field(
        True,
        description="Lay each batch (batch_size examples) out without padding: examples "
        "packed into rows no longer than the batch's longest (one row on flash attention), "
        "no attention across examples; false: length-grouped padded batches.",
    )
    chat_template: str | None = Field(
        None,
        description="null: the model's own template (alpaca with its BOS/EOS if it has "
        "none; the 'default' one of several); a name "
        "(chatml, llama2, alpaca, zephyr), a Jinja template, or a .jinja file.",
    )
    train_on_inputs: bool = Field(
        False, description="false: loss only on the answer tokens; true: on every token."
    )
    dataset_format: str = Field(
        "auto",
        description="auto, qa, prompt_completion, alpaca, chat or text (or a plugin's reader).",
    )
    system_prompt: str | None = Field(
        None, description="System message added to qa and alpaca rows (not to chat rows)."
    )
    load_in_4bit: bool = Field(
        False, description="QLoRA: load the base in 4-bit NF4 with bitsandbytes (CUDA only)."
    )
    torch_dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto",
        description="dtype of the frozen base weights; auto: the mixed_precision dtype "
        "(bf16 / fp16), else float32. GGUF weights are dequantized to it.",
    )
    use_rslora: bool = Field(False, description="Rank-stabilised LoRA: scale alpha/sqrt(rank).")
    use_dora: bool = Field(False, description="DoRA: weight-decomposed LoRA.")
    modules_to_save: list[str] | None = Field(
        None, description="Modules trained in full and saved with the adapter (e.g. lm_head)."
    )
    attn_implementation: str | None = Field(
        None,
        description="transformers attention: sdpa, eager, flash_attention_2 (null: auto). "
        "flash_attention_2 (CUDA, flash-attn installed) packs each micro-batch into one row, "
        "examples kept apart through position ids.",
    )
    kernels: Literal["liger"] | None = Field(
        None,
        description="liger: Liger's Triton RMSNorm, RoPE and SwiGLU kernels for the families "
        "it supports (CUDA, liger-kernel installed); null: transformers' own.",
    )
    eval_split: float = Field(
        0.0,
        ge=0.0,
        lt=0.5,
        description="Fraction of the rows held out (chosen by seed) to measure eval loss on.",
    )
    eval_data: str | None = Field(
        None, description="A separate file or folder of eval rows (same format as the data)."
    )
    eval_steps: int | None = Field(
        None,
        gt=0,
        description="Eval loss every this many optimizer steps and at the end (null: ~10 "
        "times per run).",
    )
    sample_max_new_tokens: int = Field(
        64, gt=0, description="Tokens generated per sample prompt (greedy)."
    )
    method: Literal["sft", "dpo", "orpo", "simpo", "grpo"] = Field(
        "sft",
        description="sft: next-token loss on the answers; dpo, orpo, simpo: preference "
        "tuning on prompt/chosen/rejected pairs (docs/llm.md, preference tuning); grpo: "
        "learning from rewards of the model's own samples (docs/llm.md, GRPO).",
    )
    beta: float | None = Field(
        None,
        ge=0,
        description="Preference strength: DPO/SimPO beta, ORPO's lambda (null: 0.1 for dpo "
        "and orpo, 2.0 for simpo); GRPO: weight of the KL to the reference (null: 0.0, "
        "no reference pass).",
    )
    label_smoothing: float = Field(
        0.0, ge=0.0, lt=0.5, description="DPO/SimPO: assumed fraction of flipped labels."
    )
    dpo_loss: Literal["sigmoid", "ipo"] = Field(
        "sigmoid", description="DPO's loss: sigmoid (the DPO paper) or ipo (IPO's squared loss)."
    )
    gamma: float = Field(0.5, ge=0.0, description="SimPO's target reward margin.")
    precompute_ref_logps: bool = Field(
        False,
        description="DPO: compute the reference log-probs once before training and cache "
        "them, instead of a reference forward every step.",
    )

    rewards: list[str] = Field(
        default_factory=list,
        description="GRPO: the reward functions, by registered name (built in: answer_match, "
        "regex, think_format, length, json_valid; plugins add more).",
    )
    reward_weights: list[float] | None = Field(
        None, description="GRPO: one weight per reward (null: 1.0 each); the reward is the sum."
    )
    reward_options: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="GRPO: options per reward, e.g. {regex: {pattern: '^<a>.*</a>$'}, "
        "answer_match: {mode: number}}.",
    )
    num_generations: int = Field(
        8, ge=2, description="GRPO: completions sampled per prompt (the group)."
    )
    max_completion_length: int = Field(
        256, gt=0, description="GRPO: most tokens generated per completion."
    )
    temperature: float = Field(1.0, gt=0, description="GRPO: sampling temperature.")
    top_p: float = Field(1.0, gt=0, le=1, description="GRPO: nucleus sampling (1.0: off).")
    top_k: int = Field(0, ge=0, description="GRPO: sample from the k likeliest tokens (0: off).")
    epsilon: float = Field(
        0.2, gt=0, lt=1, description="GRPO: clip range of the probability ratio (lower side)."
    )
    epsilon_high: float | None = Field(
        None,
        gt=0,
        description="GRPO: upper clip range (DAPO's clip-higher; null: epsilon).",
    )
    num_iterations: int = Field(
        1,
        ge=1,
        description="GRPO: optimizer steps on each batch of completions (μ; above 1 the "
        "sampling policy's log-probs are kept for the ratio).",
    )
    scale_rewards: Literal["group", "batch", "none"] = Field(
        "group",
        description="GRPO: divide advantages by the group's reward std, the batch's, or not "
        "at all (Dr. GRPO).",
    )
    loss_type: Literal["grpo", "bnpo", "dr_grpo", "dapo"] = Field(
        "dapo",
        description="GRPO: loss normalisation: grpo (per completion, then mean), bnpo (per "
        "batch token), dr_grpo (by completions × max_completion_length), dapo (per token "
        "of the accumulation window).",
    )
    use_bias_correction_kl: bool = Field(
        True,
        description="GRPO: multiply the KL term by the probability ratio (DeepSeek-V3.2's "
        "unbiased KL gradient, TRL's default).",
    )
    use_vllm: bool = Field(
        False, description="GRPO: generate with vLLM (CUDA only; not available on CPU)."
    )

    @field_validator("modules_to_save", mode="before")
    @classmethod
    def _comma_list(cls, value: object) -> object:
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        return value

    @model_validator(mode="after")
    def _one_eval_source(self) -> LLMSection:
        if self.eval_split and self.eval_data:
            raise ValueError("set eval_split or eval_data, not both")
        return self

    @model_validator(mode="after")
    def _beta_positive(self) -> LLMSection:
        if self.beta == 0 and self.method != "grpo":
            raise ValueError(f"beta must be greater than 0 for method {self.method}")
        return self

    def preference_beta(self) -> float:
        """``beta`` or the method's default (TRL's DPO/ORPO/GRPO default, SimPO's paper)."""
        if self.beta is not None:
            return self.beta
        return {"simpo": 2.0, "grpo": 0.0}.get(self.method, 0.1)
