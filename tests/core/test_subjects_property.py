"""Property tests: subject matching agrees with a regex reading of the NATS rules."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from cellmono.core.subjects import SubjectIndex, matches, validate_pattern, validate_subject

tokens = st.sampled_from(["a", "b", "orders", "x1", "é", "-"])
subjects = st.lists(tokens, min_size=1, max_size=5).map(".".join)
pattern_tokens = st.sampled_from(["a", "b", "orders", "*"])


@st.composite
def patterns(draw: st.DrawFn) -> str:
    parts = draw(st.lists(pattern_tokens, min_size=1, max_size=5))
    if draw(st.booleans()):
        parts.append(">")
    return ".".join(parts)


def reference(pattern: str, subject: str) -> bool:
    regex = ""
    for position, token in enumerate(pattern.split(".")):
        separator = r"\." if position else ""
        if token == ">":
            regex += separator + r"[^.]+(\.[^.]+)*"
        elif token == "*":
            regex += separator + r"[^.]+"
        else:
            regex += separator + re.escape(token)
    return re.fullmatch(regex, subject) is not None


@given(patterns(), subjects)
def test_matches_agrees_with_reference(pattern: str, subject: str) -> None:
    validate_pattern(pattern)
    validate_subject(subject)
    assert matches(pattern, subject) == reference(pattern, subject)


@given(st.lists(patterns(), min_size=1, max_size=8), subjects)
def test_index_returns_exactly_the_matching_entries(pattern_list: list[str], subject: str) -> None:
    index: SubjectIndex[int] = SubjectIndex()
    for number, pattern in enumerate(pattern_list):
        index.add(pattern, number)
    expected = tuple(number for number, pattern in enumerate(pattern_list) if reference(pattern, subject))
    assert index.lookup(subject) == expected
    assert index.lookup(subject) == expected  # and again from the cache
