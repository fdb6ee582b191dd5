"""Network types: how each one is built with PEFT and written in LyCORIS's key layout.

One module per type (:mod:`.lora` for ``lora``/``locon``, :mod:`.dora`, :mod:`.loha`,
:mod:`.lokr`), each with ``peft_config(...)`` and ``layer_tensors(layer)``, the latter giving
the file's tensors of one adapted PEFT layer under their kohya/LyCORIS suffixes
(``lora_down.weight``, ``hada_w1_a``, ``lokr_w1``, ``dora_scale``, ``alpha``...).
"""

from __future__ import annotations

from importlib import import_module
from typing import Any, Literal

#: ``sd.network``'s choices: the keys of NETWORKS (a test compares them)
NetworkType = Literal["lora", "locon", "loha", "lokr", "dora"]
#: The network types: ``sd.network``'s choices and the docs' table (a test compares them).
#: name -> (module, where its files load)
NETWORKS: dict[str, tuple[str, str]] = {
    "lora": ("lora", "diffusers, ComfyUI, A1111, sd-scripts"),
    "locon": ("lora", "diffusers, ComfyUI, A1111, sd-scripts"),
    "loha": ("loha", "LyCORIS, ComfyUI, A1111"),
    "lokr": (
        "lokr",
        "LyCORIS, A1111; ComfyUI without `use_tucker` (it refuses modules with `.lokr_t2`)",
    ),
    "dora": (
        "dora",
        "LyCORIS (exact), diffusers (its `.diffusers.safetensors`, exact); "
        "ComfyUI approximately (see below); A1111 wrongly (see below)",
    ),
}
#: the types whose file is a plain LoRA (lora_down/lora_up/alpha)
PLAIN = ("lora", "locon")


def network_module(network: str) -> Any:
    """The module that builds and writes ``network``."""
    return import_module(f"lorakit_sd.networks.{NETWORKS[network][0]}")


def file_network(keys: Any) -> str:
    """The network type a kohya/LyCORIS file's keys describe."""
    suffixes = {k.split(".", 1)[1] for k in keys if "." in k}
    if any(s.startswith("hada_") for s in suffixes):
        return "loha"
    if any(s.startswith("lokr_") for s in suffixes):
        return "lokr"
    if "dora_scale" in suffixes:
        return "dora"
    return "lora"
