"""Image labelers (CLIP tags, BLIP captions, file names) for lorakit label."""

__version__ = "0.1.0"
