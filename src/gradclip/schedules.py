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

from gradclip.checks import ConfigError, require_choice, require_int, require_known_keys, require_number

SCHEDULES = ("constant", "robbins_monro", "step", "cosine")
# The keys of each schedule (configs/schedule/<name>.yaml).
KEYS = {"constant": ("name", "a0"), "robbins_monro": ("name", "a0", "power", "n0"),
        "step": ("name", "a0", "gamma", "step_size"), "cosine": ("name", "a0", "a_min")}
# (n + n0)^p overflows a float for p * log10(n + n0) > 308: p <= 10 is safe up to n ~ 1e30 and
# covers every schedule of interest (A1 needs 0.5 < p <= 1; p > 1 is the freeze regime).
MAX_POWER = 10.0


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


def validate_schedule_config(cfg: Mapping, steps: int | None = None) -> None:
    """Check a ``schedule`` config before any work; raise ConfigError naming the key. With
    ``steps``, also check that every a(n), n < steps, is a finite number > 0 (the schedules are
    non-increasing, so the first and the last step decide)."""
    require_choice(cfg, "schedule", "name", SCHEDULES)
    name = cfg["name"]
    require_known_keys(cfg, "schedule", KEYS[name], f"schedule.name={name}")
    require_number(cfg, "schedule", "a0", lambda v: v > 0, "> 0")
    if name == "robbins_monro":
        require_number(cfg, "schedule", "power", lambda v: 0 <= v <= MAX_POWER,
                       f"in [0, {MAX_POWER:g}] (A1 holds for 0.5 < p <= 1)")
        require_number(cfg, "schedule", "n0", lambda v: v > 0, "> 0 (a(0) = a0 / n0^p)")
    if name == "step":
        require_number(cfg, "schedule", "gamma", lambda v: 0 < v <= 1, "in (0, 1]")
        require_int(cfg, "schedule", "step_size", lambda v: v >= 1, "an integer >= 1")
    if name == "cosine":
        require_number(cfg, "schedule", "a_min", lambda v: 0 <= v <= cfg["a0"], "in [0, schedule.a0]")
    if steps is not None:
        schedule = _build(cfg, steps)
        for n in (0, steps - 1):
            try:
                a = schedule(n)
            except (OverflowError, ZeroDivisionError):
                a = math.nan
            if not (math.isfinite(a) and a > 0):
                settings = ", ".join(f"schedule.{k}={cfg[k]}" for k in KEYS[name][1:])
                raise ConfigError(f"{settings} gives a({n}) = {a!r} with steps={steps}: every a(n) must be a "
                                  "finite number > 0; change these settings")


def make_schedule(cfg: Mapping, total_steps: int) -> Schedule:
    """Build a Schedule from a ``schedule`` config; cosine anneals over ``total_steps``."""
    validate_schedule_config(cfg, total_steps)
    return _build(cfg, total_steps)


def _build(cfg: Mapping, total_steps: int) -> Schedule:
    name = cfg["name"]
    kwargs: dict = {}
    if name == "robbins_monro":
        kwargs.update(power=float(cfg["power"]), n0=float(cfg["n0"]))
    elif name == "step":
        kwargs.update(gamma=float(cfg["gamma"]), step_size=int(cfg["step_size"]))
    elif name == "cosine":
        kwargs.update(a_min=float(cfg["a_min"]), total=max(int(total_steps), 1))
    return Schedule(name, float(cfg["a0"]), **kwargs)
