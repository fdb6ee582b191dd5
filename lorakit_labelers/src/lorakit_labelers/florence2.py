"""The ``florence2`` labeler: captions from Florence-2 (transformers'
``Florence2ForConditionalGeneration``), asked with a task token such as
``<DETAILED_CAPTION>``.

Florence-2 is an encoder-decoder: every image is resized to the model's one input size and
the task is the same for every image, so a batch needs no padding.
"""

from __future__ import annotations

from lorakit_labelers.generating import GeneratingCaptioner


class Florence2Captioner(GeneratingCaptioner):
    """Captions images with a Florence-2 model."""

    name = "florence2"
    what = "Florence-2"
    model_loader = "Florence2ForConditionalGeneration"
    model_types = ("florence2",)
    batch_size = 8
