"""SANA (linear-attention DiT, Gemma-2 captions, 32x deep-compression VAE) for lorakit-sd."""
