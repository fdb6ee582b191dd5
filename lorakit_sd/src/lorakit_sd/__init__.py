"""Stable Diffusion 1.5 / SDXL LoRA backend for lorakit."""

__version__ = "0.1.0"
