"""One training step of the ``sd`` backend: making the model trainable (adapt), the loss,
where modules live (devices) and a quantized base."""
