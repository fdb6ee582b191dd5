"""What the FLUX.1 / SD3 tests share: a real training run on a tiny flow model, in-process."""

from __future__ import annotations

SD = {"max_sequence_length": 16, "bucket_step": 16}


def train(tmp, model, data, resume=None, **overrides):
    """Train ``model`` through the engine with the ``sd`` plugin; (result, capture)."""
    import lorakit_sd.plugin
    from lorakit_sd.testing import tiny_config
    from sd_helpers import Capture

    from lorakit.config import load_config
    from lorakit.engine import train as run
    from lorakit.plugins import build_plugins, set_plugins

    cap = Capture()
    plugins = build_plugins(entry_points=False, extra=[("sd", lorakit_sd.plugin), ("c", cap)])
    set_plugins(plugins)
    try:
        output = overrides.pop("output_dir", tmp / "run")
        sd = {**SD, **overrides.pop("sd", {})}
        cfg = tiny_config(model, data, output, sd=sd, **overrides)
        config = load_config(data=cfg, registries=plugins.registries)
        result = run(config, plugins=plugins, progress=False, resume=resume)
    finally:
        set_plugins(None)
    return result, cap
