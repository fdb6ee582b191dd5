"""Know before you rent: peak memory of a run from its config, without weights or a GPU.

- :mod:`~lorakit.planning.estimate`: the backend's :class:`PlanModel`, one step traced on
  fake tensors under torch's memory tracker, the optimizer state table;
- :mod:`~lorakit.planning.plan`: the :class:`Plan`, its one-line summary and the ladder;
- :mod:`~lorakit.planning.gpus`: cards by name and ``--gpu`` parsing.

Importing this package imports no torch; tracing does.
"""

from lorakit.planning.estimate import Estimate, PlanModel, optimizer_bytes
from lorakit.planning.gpus import Card, local_card, parse_gpu
from lorakit.planning.plan import Plan, Planner, Row, make_plan, plan_line

__all__ = [
    "Card",
    "Estimate",
    "Plan",
    "PlanModel",
    "Planner",
    "Row",
    "local_card",
    "make_plan",
    "optimizer_bytes",
    "parse_gpu",
    "plan_line",
]
