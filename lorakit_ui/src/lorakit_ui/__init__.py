"""lorakit-ui: ``lorakit ui`` serves a local page to set up, run and watch trainings.

The page drives the same code paths as the CLI: configs are validated with lorakit's
``load_config``, runs are ``lorakit train`` subprocesses, status comes from ``run.json`` and
``metrics.jsonl``. The web stack (Starlette, uvicorn) is imported only when ``lorakit ui``
runs.
"""

__version__ = "0.1.0"
