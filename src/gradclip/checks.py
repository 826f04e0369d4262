"""Input checks shared by every config section: bad input fails before any work starts."""

from __future__ import annotations

from collections.abc import Callable, Mapping


class ConfigError(ValueError):
    """Bad input, found before any work. The message names the key and what is allowed."""


def require_number(
    cfg: Mapping, section: str, key: str, ok: Callable[[float], bool], allowed: str
) -> None:
    """Raise ConfigError unless ``cfg[key]`` is a number (not a bool) for which ``ok`` holds."""
    value = cfg.get(key)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not ok(value):
        raise ConfigError(f"{section}.{key}={value!r} is not allowed: must be {allowed}")


def require_int(cfg: Mapping, section: str, key: str, ok: Callable[[int], bool], allowed: str) -> None:
    """Raise ConfigError unless ``cfg[key]`` is an integer (not 2.0, not a bool) for which ``ok`` holds."""
    value = cfg.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or not ok(value):
        raise ConfigError(f"{section}.{key}={value!r} is not allowed: must be {allowed}")


def require_choice(cfg: Mapping, section: str, key: str, choices: tuple[str, ...]) -> None:
    """Raise ConfigError unless ``cfg[key]`` is one of ``choices``."""
    value = cfg.get(key)
    if value not in choices:
        raise ConfigError(f"{section}.{key}={value!r} is not one of: {', '.join(map(str, choices))}")
