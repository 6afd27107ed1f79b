"""Anti-flap properties of the trigger policy, checked with Hypothesis on synthetic histories and integer ticks.

Each property is a function returning its violations, so the same check runs twice: on `decide`,
where Hypothesis must find nothing, and on a deliberately broken policy, where `find` must
produce a counterexample (a property that cannot fail guards nothing).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import pytest
from hypothesis import HealthCheck, find, given, settings as hypothesis_settings, strategies as st

from cellmono.ops.signals import Sample, TriggerSettings
from cellmono.ops.triggers import CellState, Decision, decide

Policy = Callable[..., tuple[Decision, CellState]]

# 15 s ticks: an hour is 240 ticks; short windows so a property covers several moves
SETTINGS = TriggerSettings(up_delay=60, down_delay=120, down_window=60, cooldown=120, dwell=300, max_replicas=4)
HOUR = SETTINGS.ticks(3600)
QUICK = hypothesis_settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def run(policy: Policy, cpu: Sequence[float], settings: TriggerSettings = SETTINGS, **fields: object) -> list[Decision]:
    """Open loop: the CPU series is the signal, whatever the policy does."""
    history: list[Sample] = []
    state, decisions = CellState(), []
    for tick, value in enumerate(cpu):
        history.append(Sample(cell="c", at=15.0 * tick, cpu_ratio=value, **fields))  # type: ignore[arg-type]
        decision, state = policy(history[-8:], state, tick, settings)
        decisions.append(decision)
    return decisions


def closed_loop(policy: Policy, load: Sequence[float], settings: TriggerSettings = SETTINGS) -> list[Decision]:
    """Closed loop: a cell whose CPU is its load over its capacity (in process, `inprocess_share` of a worker)."""
    history: list[Sample] = []
    state, decisions = CellState(), []
    for tick, value in enumerate(load):
        capacity = settings.inprocess_share if state.level == 0 else state.level
        history.append(Sample(cell="c", at=15.0 * tick, cpu_ratio=value / capacity))
        decision, state = policy(history[-8:], state, tick, settings)
        decisions.append(decision)
    return decisions


def direction_changes(decisions: Sequence[Decision]) -> int:
    directions = [1 if d.level_after > d.level_before else -1 for d in decisions if d.level_after != d.level_before]
    return sum(1 for before, after in zip(directions, directions[1:]) if before != after)


# -- the properties -----------------------------------------------------------------------------
def flapping(policy: Policy, cpu: Sequence[float]) -> list[str]:
    """At most one direction change per dwell, plus one, in any hour of noise of any amplitude."""
    limit = math.ceil(len(cpu) / SETTINGS.ticks(SETTINGS.dwell)) + 1
    changes = direction_changes(run(policy, cpu))
    return [f"{changes} direction changes in {len(cpu)} ticks, limit {limit}"] if changes > limit else []


def band_moves(policy: Policy, cpu: Sequence[float]) -> list[str]:
    """Noise inside the tolerance band (between exit and enter) moves nothing."""
    return [f"{d.action} at tick {d.tick}" for d in run(policy, cpu) if d.moves]


def slow_reaction(policy: Policy, calm: int, high: float, settings: TriggerSettings) -> list[str]:
    """A step above enter promotes within the up delay plus one interval."""
    deadline = calm + settings.ticks(settings.up_delay) + 1
    decisions = run(policy, [0.1] * calm + [high] * (deadline - calm + 1), settings)
    first = next((d.tick for d in decisions if d.action == "promote"), None)
    return [] if first is not None and first <= deadline else [f"promoted at {first}, deadline {deadline}"]


def out_of_bounds(policy: Policy, cpu: Sequence[float], untrusted: bool) -> list[str]:
    """Levels stay within [0, max_replicas], and an isolated cell never comes back in process."""
    problems = []
    for d in run(policy, cpu, untrusted=untrusted):
        if not 0 <= d.level_after <= SETTINGS.max_replicas:
            problems.append(f"level {d.level_after} at tick {d.tick}")
        if untrusted and d.tick > 0 and d.level_after < SETTINGS.min_replicas:
            problems.append(f"isolated cell in process at tick {d.tick}")
    return problems


def oscillation(policy: Policy, calm: int, load: float) -> list[str]:
    """A step of load, in closed loop, settles monotonically (no direction change) within a bound."""
    settle = (SETTINGS.max_replicas + 1) * (SETTINGS.ticks(SETTINGS.up_delay) + SETTINGS.ticks(SETTINGS.cooldown) + 2)
    decisions = closed_loop(policy, [0.1] * calm + [load] * (2 * settle + HOUR))
    problems = []
    if (changes := direction_changes(decisions[calm:])) > 0:
        problems.append(f"{changes} direction changes after a step to {load}")
    last = max((d.tick for d in decisions if d.moves), default=calm)
    if last > calm + settle:
        problems.append(f"still moving at tick {last}, {last - calm} ticks after the step")
    return problems


# -- deliberately broken policies ---------------------------------------------------------------
def no_dwell(history: Sequence[Sample], state: CellState, tick: int, settings: TriggerSettings,
             **kwargs: object) -> tuple[Decision, CellState]:
    """Forgets which way it last moved, so the dwell never applies."""
    return decide(history, state.model_copy(update={"last_direction": 0}), tick, settings, **kwargs)  # type: ignore[arg-type]


def no_counters(history: Sequence[Sample], state: CellState, tick: int, settings: TriggerSettings,
                **kwargs: object) -> tuple[Decision, CellState]:
    """Loses its tick counters every tick, so a sustained signal never counts up."""
    return decide(history, state.model_copy(update={"up_count": 0, "down_count": 0}), tick, settings, **kwargs)  # type: ignore[arg-type]


def no_ceiling(history: Sequence[Sample], state: CellState, tick: int, settings: TriggerSettings,
               **kwargs: object) -> tuple[Decision, CellState]:
    """Ignores the configured max_replicas."""
    return decide(history, state, tick, settings.model_copy(update={"max_replicas": 3 * settings.max_replicas}), **kwargs)  # type: ignore[arg-type]


def narrow_band(history: Sequence[Sample], state: CellState, tick: int, settings: TriggerSettings,
                **kwargs: object) -> tuple[Decision, CellState]:
    """Enter sits just above exit: the dead band has collapsed."""
    return decide(history, state, tick, settings.model_copy(update={"cpu_enter": settings.cpu_exit + 0.01}), **kwargs)  # type: ignore[arg-type]


def bang_bang(history: Sequence[Sample], state: CellState, tick: int, settings: TriggerSettings,
              **_: object) -> tuple[Decision, CellState]:
    """The naive controller: up above enter, down below exit, every tick, no prediction."""
    cpu, level = history[-1].cpu_ratio, state.level
    target = min(level + 1, settings.max_replicas) if cpu > settings.cpu_enter else max(level - 1, 0) if cpu < settings.cpu_exit else level
    action = "hold" if target == level else "promote" if level == 0 else "demote" if target == 0 else \
        "add_replica" if target > level else "remove_replica"
    decision = Decision(cell="c", tick=tick, at=history[-1].at, action=action, level_before=level, level_after=target)
    return decision, state.model_copy(update={"level": target})


# -- strategies ---------------------------------------------------------------------------------
def segments(low: float, high: float, length: int) -> st.SearchStrategy[list[float]]:
    """Noise as runs of values (a run lets a counter fill), cut to `length` ticks."""
    run_ = st.tuples(st.floats(low, high), st.integers(1, 30)).map(lambda pair: [pair[0]] * pair[1])
    return st.lists(run_, min_size=1, max_size=60).map(lambda runs: ([v for r in runs for v in r] * length)[:length])


ANY_NOISE = segments(0.0, 2.0, HOUR)
IN_BAND = segments(SETTINGS.cpu_exit + 1e-6, SETTINGS.cpu_enter, HOUR)


# -- the policy keeps them ----------------------------------------------------------------------
@QUICK
@given(ANY_NOISE)
def test_at_most_one_direction_change_per_dwell_under_any_noise(cpu: list[float]) -> None:
    assert flapping(decide, cpu) == []


@QUICK
@given(IN_BAND)
def test_noise_within_the_band_moves_nothing(cpu: list[float]) -> None:
    assert band_moves(decide, cpu) == []


@QUICK
@given(st.integers(0, 40), st.floats(0.76, 3.0), st.integers(0, 20))
def test_reaction_within_the_delay_plus_one_interval(calm: int, high: float, delay_ticks: int) -> None:
    settings = SETTINGS.model_copy(update={"up_delay": 15.0 * delay_ticks})
    assert slow_reaction(decide, calm, high, settings) == []


@QUICK
@given(ANY_NOISE.map(lambda cpu: [3 * value for value in cpu]), st.booleans())
def test_bounds_are_respected(cpu: list[float], untrusted: bool) -> None:
    assert out_of_bounds(decide, cpu, untrusted) == []


@QUICK
@given(st.integers(0, 20), st.floats(0.05, 6.0))
def test_a_step_converges_without_oscillation(calm: int, load: float) -> None:
    assert oscillation(decide, calm, load) == []


# -- and each property catches a policy that breaks it ------------------------------------------
FIND = hypothesis_settings(max_examples=2000, deadline=None, database=None,
                           suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


def test_flapping_is_caught_without_dwell() -> None:
    found = find(ANY_NOISE, lambda cpu: bool(flapping(no_dwell, cpu)), settings=FIND)
    assert flapping(no_dwell, found) and not flapping(decide, found)


def test_band_moves_are_caught_without_a_dead_band() -> None:
    found = find(IN_BAND, lambda cpu: bool(band_moves(narrow_band, cpu)), settings=FIND)
    assert not band_moves(decide, found)


def test_slow_reaction_is_caught_without_counters() -> None:
    assert slow_reaction(no_counters, 5, 1.0, SETTINGS.model_copy(update={"up_delay": 60.0}))
    assert not slow_reaction(decide, 5, 1.0, SETTINGS.model_copy(update={"up_delay": 60.0}))


def test_bounds_are_caught_without_the_ceiling() -> None:
    found = find(ANY_NOISE.map(lambda cpu: [3 * value for value in cpu]),
                 lambda cpu: bool(out_of_bounds(no_ceiling, cpu, False)), settings=FIND)
    assert not out_of_bounds(decide, found, False)


def test_oscillation_is_caught_on_the_naive_controller() -> None:
    load = find(st.floats(0.05, 6.0), lambda value: bool(oscillation(bang_bang, 5, value)), settings=FIND)
    assert not oscillation(decide, 5, load)


@pytest.mark.parametrize("cpu", [[0.9, 0.1] * (HOUR // 2), [0.9] * 10 + [0.1] * 10])
def test_flapping_examples(cpu: list[float]) -> None:
    """Two hand-written worst cases: alternation every tick, and every ten ticks."""
    assert flapping(decide, cpu) == []
