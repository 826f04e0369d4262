"""Input checks shared by every config section: bad input fails before any work starts."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any


class ConfigError(ValueError):
    """Bad input, found before any work. The message names the key and what is allowed."""


def require_number(
    cfg: Mapping, section: str, key: str, ok: Callable[[float], bool], allowed: str
) -> None:
    """Raise ConfigError unless ``cfg[key]`` is a finite number (not a bool, not NaN or +-inf)
    for which ``ok`` holds: an infinite step size or decay would only show up later as a
    'diverged' or 'failed' run, and would then count as a result."""
    value = cfg.get(key)
    if not is_number(value) or not ok(value):
        raise ConfigError(f"{section}.{key}={value!r} is not allowed: must be a finite number {allowed}")


def require_int(cfg: Mapping, section: str, key: str, ok: Callable[[int], bool], allowed: str) -> None:
    """Raise ConfigError unless ``cfg[key]`` is an integer (not 2.0, not a bool) for which ``ok`` holds."""
    value = cfg.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or not ok(value):
        raise ConfigError(f"{section}.{key}={value!r} is not allowed: must be {allowed}")


def require_known_keys(cfg: Mapping, section: str, known, owner: str | None = None) -> None:
    """Raise ConfigError if ``cfg`` has a key outside ``known``: a misspelt key added with ``+``
    (``+clip.thresh=1``, the form Hydra's own hint suggests) must not be silently ignored."""
    unknown = sorted(str(key) for key in cfg if key not in known)
    if unknown:
        where = f" of {owner}" if owner else ""
        raise ConfigError(f"{section}.{unknown[0]} is not a key{where}; known keys: {', '.join(known)}")


def require_choice(cfg: Mapping, section: str, key: str, choices: tuple[str, ...]) -> None:
    """Raise ConfigError unless ``cfg[key]`` is one of ``choices``."""
    value = cfg.get(key)
    if value not in choices:
        raise ConfigError(f"{section}.{key}={value!r} is not one of: {', '.join(map(str, choices))}")


# Declarative rules, for config sections checked from a table of keys (data, model): a rule is
# (description of the allowed values, predicate).
Rule = tuple[str, Callable[[Any], bool]]


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def int_at_least(lo: int) -> Rule:
    return f"an integer >= {lo}", lambda v: is_int(v) and v >= lo


def number_at_least(lo: float) -> Rule:
    return f"a finite number >= {lo}", lambda v: is_number(v) and v >= lo


def one_of(*choices: str) -> Rule:
    return "one of: " + ", ".join(choices), lambda v: v in choices


BOOL: Rule = ("true or false", lambda v: isinstance(v, bool))
FINITE: Rule = ("a finite number", is_number)
