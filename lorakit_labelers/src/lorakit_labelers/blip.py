"""The ``blip`` labeler: a one-sentence caption per image from BLIP
(``BlipForConditionalGeneration``), decoded by beam search so the same image always gets
the same caption."""

from __future__ import annotations

from lorakit_labelers.generating import GeneratingCaptioner


class BlipCaptioner(GeneratingCaptioner):
    """Captions images with a BLIP captioning model."""

    name = "blip"
    what = "BLIP"
    model_loader = "BlipForConditionalGeneration"
    model_types = ("blip",)
    batch_size = 16
