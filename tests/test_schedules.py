"""Step-size schedules a(n) and their checks."""

import math

import pytest

from gradclip.checks import ConfigError
from gradclip.schedules import make_schedule


def test_constant():
    a = make_schedule({"name": "constant", "a0": 0.3}, total_steps=10)
    assert [a(n) for n in (0, 1, 1000)] == [0.3, 0.3, 0.3]


@pytest.mark.parametrize("power", [0.0, 0.3, 0.5, 0.75, 1.0, 1.5])
def test_robbins_monro(power):
    a = make_schedule({"name": "robbins_monro", "a0": 0.5, "power": power, "n0": 10}, total_steps=10)
    for n in (0, 1, 7, 1000):
        assert a(n) == pytest.approx(0.5 / (n + 10) ** power)


def test_robbins_monro_sums_follow_a1():
    """p = 0.75 satisfies A1: partial sums of a grow without bound, those of a^2 converge."""
    a = make_schedule({"name": "robbins_monro", "a0": 1.0, "power": 0.75, "n0": 1}, total_steps=1)
    sum_a = lambda n: math.fsum(a(k) for k in range(n))  # noqa: E731
    sum_a2 = lambda n: math.fsum(a(k) ** 2 for k in range(n))  # noqa: E731
    assert sum_a(100_000) > 1.7 * sum_a(10_000)  # grows like 4 n^(1/4): x1.78 per decade
    assert sum_a2(100_000) - sum_a2(10_000) < 0.05 * sum_a2(10_000)  # a convergent tail


def test_step_decay():
    a = make_schedule({"name": "step", "a0": 1.0, "gamma": 0.5, "step_size": 3}, total_steps=10)
    assert [a(n) for n in range(7)] == [1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.25]


def test_cosine():
    a = make_schedule({"name": "cosine", "a0": 1.0, "a_min": 0.1}, total_steps=100)
    assert a(0) == pytest.approx(1.0)
    assert a(50) == pytest.approx(0.55)
    assert a(100) == pytest.approx(0.1)
    assert a(500) == pytest.approx(0.1)
    assert all(a(n) >= a(n + 1) for n in range(100))


@pytest.mark.parametrize(
    "cfg, message",
    [
        ({"name": "linear", "a0": 0.1}, r"schedule.name='linear' is not one of: constant, robbins_monro, step, cosine"),
        ({"name": "constant", "a0": 0.0}, r"schedule.a0=0.0 .* > 0"),
        ({"name": "robbins_monro", "a0": 0.1, "power": -0.5, "n0": 1}, r"schedule.power=-0.5 .* in \[0, 10\]"),
        ({"name": "robbins_monro", "a0": 0.1, "power": 0.5, "n0": 0}, r"schedule.n0=0 .* > 0"),
        ({"name": "step", "a0": 0.1, "gamma": 1.5, "step_size": 10}, r"schedule.gamma=1.5 .* in \(0, 1\]"),
        ({"name": "step", "a0": 0.1, "gamma": 0.5, "step_size": 2.5}, r"schedule.step_size=2.5 .* integer >= 1"),
        ({"name": "cosine", "a0": 0.1, "a_min": 0.2}, r"schedule.a_min=0.2 .* in \[0, schedule.a0\]"),
    ],
)
def test_bad_schedule_config_names_the_key(cfg, message):
    with pytest.raises(ConfigError, match=message):
        make_schedule(cfg, total_steps=10)
