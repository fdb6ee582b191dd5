"""lorakit-example-reward: the ``dose_in_range`` reward for GRPO."""
