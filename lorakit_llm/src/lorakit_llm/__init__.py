"""Causal language model LoRA backend for lorakit."""

__version__ = "0.1.0"
