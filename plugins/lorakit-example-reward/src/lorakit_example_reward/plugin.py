"""Entry point of lorakit-example-reward: registers the ``dose_in_range`` reward.

It uses only lorakit's public API (``lorakit.api``: ``hookimpl``, ``RewardSpec``). The
reward's module loads only when a run names it in ``llm.rewards``.
"""

from __future__ import annotations

from collections.abc import Callable

from lorakit.api import RewardSpec, hookimpl, lazy

LORAKIT_PLUGIN_API = 2


@hookimpl
def register_rewards(register: Callable[[RewardSpec], None]) -> None:
    register(
        RewardSpec(
            name="dose_in_range",
            factory=lazy("lorakit_example_reward.dose:dose_in_range"),
            description="1 when the completion's last dose (e.g. 400 mg) lies in the row's "
            "min_dose..max_dose",
            options=("unit",),
        )
    )
