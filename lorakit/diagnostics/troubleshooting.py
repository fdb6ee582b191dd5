"""Answers to the failures users hit most, shown instead of raw traces."""

OOM_LADDER = (
    "lower batch_size (raise gradient_accumulation_steps to keep the effective batch), "
    "then enable gradient_checkpointing, then lower the resolution (sd) or max_seq_len (llm), "
    "then lower lora_rank; `lorakit plan --config FILE --gpu <card>` prints the configs "
    "that fit (docs/will-it-fit.md)"
)
