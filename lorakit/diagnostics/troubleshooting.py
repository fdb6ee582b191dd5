"""Answers to the failures users hit most, shown instead of raw traces."""

OOM_LADDER = (
    "lower batch_size (raise gradient_accumulation_steps to keep the effective batch), "
    "then enable gradient_checkpointing, then lower the resolution (sd) or max_seq_len (llm), "
    "then lower lora_rank; see docs/troubleshooting.md"
)
