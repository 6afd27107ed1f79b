"""Fast, example-based checks of the capability grammar: each one names a way a grant could widen.

These are the tests the mutation run (`mutmut`, see the README's development section) leans on for
`cellmono.security.capabilities`: no hypothesis, each case a literal an attacker would try.
"""

from __future__ import annotations

import pytest

from cellmono.security import capabilities
from cellmono.security.capabilities import (MAX_CAPABILITY_LENGTH, AttenuationError, CapabilityError, CapabilitySet,
                                            Roles, parse_capability, parse_requirement)


@pytest.fixture(autouse=True)
def _cold_caches():
    """Parsing is cached per process: clear it so each test exercises the parser itself."""
    for cached in (parse_capability, parse_requirement, capabilities._glob):
        cached.cache_clear()


def allows(grant: str, requirement: str) -> bool:
    return parse_capability(grant).matches(parse_requirement(requirement))


def covers(parent: str, child: str) -> bool:
    return parse_capability(parent).covers(parse_capability(child))


@pytest.mark.parametrize("grant, requirement, expected", [
    # a `*` is one path segment: never across `/`
    ("files:read:/data/*", "files:read:/data/secret", True),
    ("files:read:/data/*", "files:read:/data/sub/secret", False),
    ("files:read:/data/*", "files:read:/data", False),
    ("files:read:/data/*.csv", "files:read:/data/q3.csv", True),
    ("files:read:/data/*.csv", "files:read:/data/sub/q3.csv", False),
    ("files:read:/data/*.csv", "files:read:/data/q3.csvx", False),
    ("files:read:/data/*.csv", "files:read:/data/x.csv.bak", False),
    ("files:read:/data/q*", "files:read:/data/q3", True),
    ("files:read:/data/q*", "files:read:/data/xq3", False),
    ("files:read:/*/secret", "files:read:/data/secret", True),
    ("files:read:/*/secret", "files:read:/data/sub/secret", False),
    # `**` is the rest of the path, at least one segment
    ("files:read:/data/**", "files:read:/data/sub/secret", True),
    ("files:read:/data/**", "files:read:/data/x", True),
    ("files:read:/data/**", "files:read:/data", False),
    ("files:read:/data/**", "files:read:/database/x", False),
    # literal paths are exact
    ("files:read:/data/a", "files:read:/data/a", True),
    ("files:read:/data/a", "files:read:/data/b", False),
    ("files:read:/data/a", "files:read:/data/a/b", False),
    ("files:read:/data/a/b", "files:read:/data/a", False),
    ("files:read:/", "files:read:/", True),
    ("files:read:/", "files:read:/x", False),
    # domain and verb
    ("files:read:/a", "files:write:/a", False),
    ("files:read:/a", "store:read:/a", False),
    ("files:*:/a", "files:write:/a", True),
    ("*:read:/a", "store:read:/a", True),
    ("*:*", "store:write:x", True),
    ("files:read", "files:read:/anything", True),
    ("files:read", "files:write", False),
    # kinds never mix
    ("files:read:/a", "files:read:a", False),
    ("files:read:a", "files:read:/a", False),
    ("files:read:a", "files:read", False),
    # dotted: `*` one token, `>` the rest (at least one)
    ("tool:call:notes.*", "tool:call:notes.add", True),
    ("tool:call:notes.*", "tool:call:notes.add.x", False),
    ("tool:call:notes.*", "tool:call:notes", False),
    ("tool:call:notes.>", "tool:call:notes.add.x", True),
    ("tool:call:notes.>", "tool:call:notes", False),
    ("tool:call:notes.add", "tool:call:notes.get", False),
    ("tool:call:notes.add", "tool:call:notes.add", True),
])
def test_a_grant_allows_exactly_what_its_pattern_says(grant, requirement, expected):
    assert allows(grant, requirement) is expected
    assert CapabilitySet([grant]).allows(requirement) is expected


@pytest.mark.parametrize("parent, child, expected", [
    ("files:read:/data/*", "files:read:/data/sub/*", False),
    ("files:read:/data/*", "files:read:/data/**", False),
    ("files:read:/data/*", "files:read:/data/x", True),
    ("files:read:/data/*", "files:read:/data/*", True),
    ("files:read:/data/*", "files:read:/data/*.csv", True),
    ("files:read:/data/*.csv", "files:read:/data/*", False),
    ("files:read:/data/*.csv", "files:read:/data/*.csv", True),
    ("files:read:/data/*.csv", "files:read:/data/*.txt", False),
    ("files:read:/data/*.csv", "files:read:/data/a.csv", True),
    ("files:read:/data/*.csv", "files:read:/data/a.txt", False),
    ("files:read:/data/a*", "files:read:/data/a*b", False),  # conservative: two different globs never cover
    ("files:read:/data/*", "files:read:/data/a*b", True),
    ("files:read:/data/**", "files:read:/data/sub/**", True),
    ("files:read:/data/**", "files:read:/data", False),
    ("files:read:/data/sub/**", "files:read:/data/**", False),
    ("files:read:/data/x", "files:read:/data/*", False),
    ("files:read:/data/x", "files:read:/data/x/y", False),
    ("files:read:/data/x/y", "files:read:/data/x", False),
    ("files:read:/data/x", "files:read:/data/y", False),
    ("files:read:/a", "files:read:a", False),
    ("files:read:/a", "files:read", False),
    ("files:read", "files:read:/a", True),
    ("files:read:/a", "files:write:/a", False),
    ("files:read:/a", "store:read:/a", False),
    ("*:read:/a", "store:read:/a", True),
    ("files:*:/a", "files:write:/a", True),
    ("tool:call:notes.*", "tool:call:notes.add", True),
    ("tool:call:notes.*", "tool:call:notes.>", False),
    ("tool:call:notes.*", "tool:call:notes.*", True),
    ("tool:call:notes.add", "tool:call:notes.*", False),
    ("tool:call:notes.>", "tool:call:notes.a.b", True),
    ("tool:call:notes.>", "tool:call:notes", False),
    ("tool:call:notes.>", "tool:call:notes.>", True),
    ("tool:call:notes.a", "tool:call:notes.a.b", False),
    ("tool:call:notes.a.b", "tool:call:notes.a", False),
    ("tool:call:notes.a", "tool:call:notes.b", False),
])
def test_covers_never_lets_a_child_widen(parent, child, expected):
    assert covers(parent, child) is expected


@pytest.mark.parametrize("text, message", [
    ("", "must have 1 to 512 characters, got 0"),
    ("x" * (MAX_CAPABILITY_LENGTH + 1), "must have 1 to 512 characters, got 513"),
    ("files", "capability 'files' must look like 'domain:verb' or 'domain:verb:resource'"),
    ("Files:read", "capability 'Files:read': domain 'Files' must match [a-z][a-z0-9_-]* or be '*'"),
    ("files:Read", "capability 'files:Read': verb 'Read' must match"),
    ("files:read:", "capability 'files:read:': empty resource after ':'"),
    ("files:read:/data//x", "capability 'files:read:/data//x': empty path segment (double or trailing '/')"),
    ("files:read:/data/", "empty path segment"),
    ("files:read://", "empty path segment"),
    ("files:read:/data/../etc", "capability 'files:read:/data/../etc': path segment '..' is not allowed; normalise"),
    ("files:read:/./x", "path segment '.' is not allowed"),
    ("files:read:/data/**/x", "capability 'files:read:/data/**/x': '**' must be the whole last path segment"),
    ("files:read:/data/a**", "'**' must be the whole last path segment"),
    ("files:read:/da ta", "capability 'files:read:/da ta': path segment 'da ta' has characters outside the grammar"),
    ("tool:call:notes..add", "capability 'tool:call:notes..add': empty name token (leading, trailing or double '.')"),
    ("tool:call:.notes", "empty name token"),
    ("tool:call:notes.", "empty name token"),
    ("tool:call:notes.>.x", "capability 'tool:call:notes.>.x': '>' must be the last token"),
    ("tool:call:no*tes", "capability 'tool:call:no*tes': token 'no*tes' has characters outside the grammar "
                         "(wildcards must be whole tokens)"),
    ("tool:call:notes.a b", "token 'a b' has characters"),
    ("1files:read", "domain '1files' must match"),
    ("f" * 65 + ":read", "must match"),
])
def test_malformed_capabilities_are_refused(text, message):
    with pytest.raises(CapabilityError) as caught:
        parse_capability(text)
    assert message in str(caught.value)


def test_non_strings_are_refused():
    with pytest.raises(CapabilityError, match="must be a string"):
        parse_capability(3)  # type: ignore[arg-type]


def test_longest_allowed_capability_parses():
    text = "files:read:/" + "a" * (MAX_CAPABILITY_LENGTH - len("files:read:/"))
    assert parse_capability(text).parts == ("a" * (MAX_CAPABILITY_LENGTH - len("files:read:/")),)
    assert parse_capability("f" * 64 + ":read").domain == "f" * 64


def test_parsed_parts_and_kinds():
    assert parse_capability("files:read:/a/b").parts == ("a", "b")
    assert parse_capability("files:read:/a/b").kind == "path"
    assert parse_capability("tool:call:a.b").kind == "dotted"
    assert parse_capability("tool:call").kind is None
    assert parse_capability("files:read:/").parts == ()
    assert parse_capability("tool:call:a:b").parts == ("a:b",)
    assert parse_capability("tool:call:a.b.c").parts == ("a", "b", "c")
    assert parse_capability("tool:call:a.*.>").parts == ("a", "*", ">")
    assert parse_capability("files:read:/a/**").parts == ("a", "**")
    assert parse_capability("files:read:/**").parts == ("**",)
    assert str(parse_capability("tool:call:a")) == "tool:call:a"


@pytest.mark.parametrize("text, pattern", [
    ("files:read:/a/*", True), ("tool:call:a.>", True), ("tool:call:a.*", True), ("*:read", True),
    ("files:read:/a", False), ("tool:call:a.b", False), ("tool:call", False),
])
def test_is_pattern(text, pattern):
    assert parse_capability(text).is_pattern is pattern


@pytest.mark.parametrize("text", ["*:read:/a", "files:*:/a", "files:read:/a/*", "tool:call:a.>", "tool:call:a.*"])
def test_requirements_are_literal(text):
    with pytest.raises(CapabilityError, match="wildcards"):
        parse_requirement(text)


def test_capability_sets():
    grants = CapabilitySet(["tool:call:notes.*", "*:read:/pub/**", "tool:call:notes.*"])
    assert len(grants) == 2
    assert grants.texts() == ("*:read:/pub/**", "tool:call:notes.*")
    assert grants.allows("tool:call:notes.add") and grants.allows("files:read:/pub/x")
    assert not grants.allows("tool:call:search.query") and not grants.allows("files:write:/pub/x")
    assert grants.allows_all(["tool:call:notes.add", "files:read:/pub/x"])
    assert not grants.allows_all(["tool:call:notes.add", "files:read:/priv/x"])
    assert grants.allows_all([])
    narrower = CapabilitySet(["tool:call:notes.add"])
    assert grants.covers(narrower) and not narrower.covers(grants)
    assert narrower.uncovered(grants) == ["*:read:/pub/**", "tool:call:notes.*"]
    assert grants.uncovered(narrower) == []
    assert grants == CapabilitySet(["tool:call:notes.*", "*:read:/pub/**"]) and grants != narrower
    assert grants != grants.texts()
    assert hash(grants) == hash(CapabilitySet(["*:read:/pub/**", "tool:call:notes.*"]))
    assert hash(grants) != hash(narrower)
    assert "tool:call:notes.*" in repr(grants)
    assert not CapabilitySet().allows("tool:call:x")
    assert CapabilitySet([parse_capability("tool:call:x")]).allows(parse_requirement("tool:call:x"))


def test_roles_resolve_and_refuse():
    roles = Roles({"reader": "tool:call:notes.get, tool:call:search.query", "writer": ["tool:call:notes.*"],
                   "empty": ""})
    assert roles.names == ("empty", "reader", "writer")
    assert roles.grants(["reader", "writer", "reader"]) == ("tool:call:notes.get", "tool:call:search.query",
                                                            "tool:call:notes.*")
    assert roles.capabilities(["reader"]).allows("tool:call:search.query")
    assert not roles.capabilities(["reader"]).allows("tool:call:notes.add")
    assert roles.capabilities(["empty"]) == CapabilitySet()
    assert roles.known(["reader", "ghost", "writer"]) == ("reader", "writer")
    assert roles.check(["writer"]) == ("writer",)
    assert "reader" in roles and "ghost" not in roles and len(roles) == 3 and list(roles) == ["reader", "writer",
                                                                                              "empty"]
    assert "tool:call:notes.get" in repr(roles)
    with pytest.raises(CapabilityError, match=r"unknown role 'ghost'; known roles: empty, reader, writer"):
        roles.grants(["ghost"])
    with pytest.raises(CapabilityError) as caught:
        roles.check(["r" * 100])
    assert f"unknown role {'r' * 64!r};" in str(caught.value)
    with pytest.raises(CapabilityError, match="known roles: \\(none defined\\)"):
        Roles({}).check(["x"])
    with pytest.raises(CapabilityError, match="role name"):
        Roles({"Bad": "tool:call"})
    with pytest.raises(CapabilityError, match="role 'bad': "):
        Roles({"bad": "tool:call:no*tes"})


def test_attenuation_error_is_a_capability_error():
    assert issubclass(AttenuationError, CapabilityError) and issubclass(CapabilityError, ValueError)
