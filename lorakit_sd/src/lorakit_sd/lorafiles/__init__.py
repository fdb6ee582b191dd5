"""LoRA files: their names (kohya, diffusers), reading them back, applying them to a model,
the export view and the exporters."""
