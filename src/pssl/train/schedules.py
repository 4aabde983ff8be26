"""Learning-rate schedules as per-step multipliers of the base lr (torch LambdaLR).

step: the paper's pre-training schedule, lr x gamma at each milestone epoch (0.01 -> 0.001 at epoch 20).
poly: lr x (1 - step / total) ** power, the usual fine-tuning schedule.
cosine: lr x (1 + cos(pi x step / total)) / 2, decayed to 0 at the last step (MDP's pre-training, Loshchilov
and Hutter's SGDR without restarts).
"""

from __future__ import annotations

import math
from collections.abc import Callable

from pssl.errors import InputError


def lr_multiplier(schedule: str, steps_per_epoch: int, total_steps: int, milestones: tuple[int, ...] = (20,),
                  gamma: float = 0.1, power: float = 0.9) -> Callable[[int], float]:
    if schedule == "step":
        return lambda step: gamma ** sum(step // steps_per_epoch >= m for m in milestones)
    if schedule == "poly":
        return lambda step: max(0.0, 1.0 - step / total_steps) ** power
    if schedule == "cosine":
        return lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / total_steps))
    raise InputError(f"unknown lr schedule {schedule!r} (step | poly | cosine)")
