"""GRPO for the llm backend: rewards, advantages and loss, generation, the method."""
