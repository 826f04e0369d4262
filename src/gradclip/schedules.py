"""Step-size schedules a(n), n = 0, 1, 2, ... the index of the SGD update.

The paper's theorem needs Robbins-Monro step sizes (assumption A1): sum a(n) = inf and
sum a(n)^2 < inf, e.g. a(n) = a0 / (n + n0)^p with 0.5 < p <= 1. The other schedules are
there to test what happens when A1 fails:

* ``constant``: a(n) = a0. sum a^2 = inf: a noise floor is expected.
* ``robbins_monro``: a(n) = a0 / (n + n0)^p for any p >= 0 (p = 0 is constant; p <= 0.5
  violates sum a^2 < inf; p > 1 violates sum a = inf and the iterates freeze).
* ``step``: a(n) = a0 * gamma^floor(n / step_size), the usual step decay.
* ``cosine``: a(n) = a_min + (a0 - a_min) (1 + cos(pi n / total)) / 2 for n < total.

The runner logs a(n) and the running sums sum a(k) (the ODE time t(n)) and sum a(k)^2.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from gradclip.checks import ConfigError, require_choice, require_number

SCHEDULES = ("constant", "robbins_monro", "step", "cosine")


@dataclass(frozen=True)
class Schedule:
    """a(n) for one of :data:`SCHEDULES`; call it with the update index n >= 0."""

    name: str
    a0: float
    power: float = 0.0
    n0: float = 1.0
    gamma: float = 0.1
    step_size: int = 1000
    a_min: float = 0.0
    total: int = 1

    def __call__(self, n: int) -> float:
        if self.name == "constant":
            return self.a0
        if self.name == "robbins_monro":
            return self.a0 / (n + self.n0) ** self.power
        if self.name == "step":
            return self.a0 * self.gamma ** (n // self.step_size)
        if self.name == "cosine":
            progress = min(n, self.total) / self.total
            return self.a_min + (self.a0 - self.a_min) * 0.5 * (1.0 + math.cos(math.pi * progress))
        raise ConfigError(f"schedule.name={self.name!r} is not one of: {', '.join(SCHEDULES)}")


def validate_schedule_config(cfg: Mapping) -> None:
    """Check a ``schedule`` config before any work; raise ConfigError naming the key."""
    require_choice(cfg, "schedule", "name", SCHEDULES)
    name = cfg["name"]
    require_number(cfg, "schedule", "a0", lambda v: v > 0, "> 0")
    if name == "robbins_monro":
        require_number(cfg, "schedule", "power", lambda v: v >= 0, ">= 0 (A1 holds for 0.5 < p <= 1)")
        require_number(cfg, "schedule", "n0", lambda v: v > 0, "> 0 (a(0) = a0 / n0^p)")
    if name == "step":
        require_number(cfg, "schedule", "gamma", lambda v: 0 < v <= 1, "in (0, 1]")
        require_number(cfg, "schedule", "step_size", lambda v: v >= 1 and float(v).is_integer(), "an integer >= 1")
    if name == "cosine":
        require_number(cfg, "schedule", "a_min", lambda v: 0 <= v <= cfg["a0"], "in [0, schedule.a0]")


def make_schedule(cfg: Mapping, total_steps: int) -> Schedule:
    """Build a Schedule from a ``schedule`` config; cosine anneals over ``total_steps``."""
    validate_schedule_config(cfg)
    name = cfg["name"]
    kwargs: dict = {}
    if name == "robbins_monro":
        kwargs.update(power=float(cfg["power"]), n0=float(cfg["n0"]))
    elif name == "step":
        kwargs.update(gamma=float(cfg["gamma"]), step_size=int(cfg["step_size"]))
    elif name == "cosine":
        kwargs.update(a_min=float(cfg["a_min"]), total=max(int(total_steps), 1))
    return Schedule(name, float(cfg["a0"]), **kwargs)
