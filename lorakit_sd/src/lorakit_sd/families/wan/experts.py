"""Wan 2.2 A14B's two experts as one trainable denoiser.

The pipeline denoises with ``transformer`` (the high-noise expert) while the timestep is at
least ``boundary_ratio · 1000`` and with ``transformer_2`` (low noise) below it. Training
routes each sample the same way: :class:`Experts` holds the experts ``sd.video.experts``
trains (``both``, ``high_noise`` or ``low_noise``) under those names and sends every sample to
the expert its timestep belongs to; the objective draws timesteps only on the trained side of
the boundary. The LoRA of each expert is written to its own file.
"""

from __future__ import annotations

from typing import Any

import torch

#: expert name -> the pipeline attribute holding it
EXPERTS = {"high_noise": "transformer", "low_noise": "transformer_2"}


class Experts(torch.nn.Module):
    """The trained experts of a two-expert pipeline, routed by timestep."""

    def __init__(self, pipe: Any, which: str) -> None:
        super().__init__()
        self.names = list(EXPERTS) if which == "both" else [which]
        for name in self.names:  # paths high_noise.<module>, low_noise.<module>
            self.add_module(name, getattr(pipe, EXPERTS[name]))
        self.boundary = float(pipe.config.boundary_ratio) * float(
            pipe.scheduler.config.num_train_timesteps
        )
        first: Any = getattr(self, self.names[0])
        self.config = first.config
        self.class_name = type(first).__name__
        self.first: list[Any] = [first]  # a list: not a second path to the same module

    # the diffusers / PEFT surface the backend uses, for every expert
    def add_adapter(self, config: Any) -> None:
        for name in self.names:
            getattr(self, name).add_adapter(config)

    @property
    def peft_config(self) -> Any:
        return self.first[0].peft_config

    def enable_gradient_checkpointing(self) -> None:
        for name in self.names:
            getattr(self, name).enable_gradient_checkpointing()

    @property
    def dtype(self) -> torch.dtype:
        dtype: torch.dtype = self.first[0].dtype
        return dtype

    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        return_dict: bool = False,
        **kwargs: Any,
    ) -> tuple[torch.Tensor]:
        """Each sample through the expert of its timestep (as the pipeline chooses)."""
        high = timestep >= self.boundary
        out: torch.Tensor | None = None
        for name, rows in (("high_noise", high), ("low_noise", ~high)):
            if not bool(rows.any()):
                continue
            if name not in self.names:
                raise RuntimeError(f"a timestep for the untrained {name} expert was drawn")
            extra = {k: v[rows] if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
            pred = getattr(self, name)(
                hidden_states=hidden_states[rows],
                timestep=timestep[rows],
                encoder_hidden_states=encoder_hidden_states[rows],
                return_dict=False,
                **extra,
            )[0]
            if out is None:  # the prediction has the latents' channels, not the input's
                out = pred.new_empty((hidden_states.shape[0], *pred.shape[1:]))
            out[rows] = pred
        assert out is not None
        return (out,)


def expert_sigmas(sigmas: torch.Tensor, which: str, boundary: float) -> torch.Tensor:
    """σ restricted to the trained side of the boundary ``boundary`` (a σ, = boundary_ratio):
    ``b + (1 - b) σ`` for the high-noise expert, ``b σ`` for the low-noise one (a linear map
    of the shifted draw, as musubi-tuner's min/max timestep); both: σ as drawn."""
    if which == "high_noise":
        return boundary + (1.0 - boundary) * sigmas
    if which == "low_noise":
        return boundary * sigmas
    return sigmas


def split_modules(modules: list[Any]) -> list[tuple[str, list[Any]]]:
    """``(file suffix, modules)`` per expert: the paths lose their ``high_noise.`` /
    ``low_noise.`` level, so each file is an ordinary Wan LoRA of one transformer."""
    from dataclasses import replace

    parts: dict[str, list[Any]] = {}
    for m in modules:
        head, _, rest = m.path.partition(".")
        if head in EXPERTS and m.component == "transformer":
            parts.setdefault(f"_{head}", []).append(replace(m, path=rest))
        else:
            parts.setdefault("", []).append(m)
    return sorted(parts.items())
