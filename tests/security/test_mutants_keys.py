"""Tests that kill mutants `mutmut` leaves alive in `cellmono.security.keys` (`.ci/mutation keys`; figures in
tests/security/MUTATION.md): each pins a check on key-encryption keys a careless edit could drop."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from pathlib import Path

import pytest

from cellmono.core.errors import ConfigError
from cellmono.security.keys import (KEY_BYTES, EnvKeyProvider, FileKeyProvider, KeyUnavailable, StaticKeyProvider,
                                    WrongKey, fingerprint, new_key_text)

A, B = b"a" * 32, b"b" * 32


def text(key: bytes) -> str:
    return base64.urlsafe_b64encode(key).decode().rstrip("=")


def test_fingerprints_and_new_keys() -> None:
    assert KEY_BYTES == 32
    assert fingerprint(A) == hashlib.sha256(b"cellmono-kek-id\x00" + A).hexdigest()[:16]
    fresh = new_key_text()
    assert "=" not in fresh and len(base64.urlsafe_b64decode(fresh + "=")) == 32 and fresh != new_key_text()


def test_wrapping_binds_the_key_and_the_associated_data() -> None:
    provider = StaticKeyProvider({"k1": A, "k2": B}, current="k2")
    key_id, wrapped = provider.wrap(b"d" * 32, b"ns1")
    assert key_id == "k2" and provider.current_key_id() == "k2"
    assert provider.unwrap("k2", wrapped, b"ns1") == b"d" * 32
    with pytest.raises(WrongKey, match="'k2' does not unwrap"):
        provider.unwrap("k2", wrapped, b"ns2")                     # moved to another namespace
    with pytest.raises(WrongKey):
        provider.unwrap("k1", wrapped, b"ns1")                     # another key
    with pytest.raises(KeyUnavailable, match="'k9' is not configured \\(configured: k1, k2\\)"):
        provider.unwrap("k9", wrapped, b"ns1")
    assert provider.wrap(b"d" * 32, b"ns1")[1] != provider.wrap(b"d" * 32, b"ns1")[1]   # fresh nonce each time
    assert StaticKeyProvider({"k1": A, "k2": B}).current == "k1"
    assert StaticKeyProvider(A).current == fingerprint(A)


def test_static_keys_must_be_present_and_32_bytes() -> None:
    with pytest.raises(KeyUnavailable):
        StaticKeyProvider({})
    with pytest.raises(ConfigError, match="'short' must be 32 bytes, got 31"):
        StaticKeyProvider({"ok": A, "short": A[:31]})
    with pytest.raises(KeyUnavailable, match="'nope' is not configured"):
        StaticKeyProvider({"k1": A}, current="nope")


def test_environment_keys() -> None:
    provider = EnvKeyProvider("KEK", {"KEK": f" id1:{text(A)} , ,{text(B)} "})
    assert provider.keys == {"id1": A, fingerprint(B): B} and provider.current == "id1"
    assert EnvKeyProvider(environ={"CELLMONO_KEK": text(B)}).current == fingerprint(B)
    for value in ("", "   "):
        with pytest.raises(KeyUnavailable, match="KEK is not set"):
            EnvKeyProvider("KEK", {"KEK": value})
    with pytest.raises(ConfigError, match="variable KEK, key 2: key must be 32 bytes, got 16"):
        EnvKeyProvider("KEK", {"KEK": f"{text(A)},{text(A[:16])}"})
    with pytest.raises(ConfigError, match="key is not base64"):
        EnvKeyProvider("KEK", {"KEK": "a"})


def test_key_files_are_private_and_strict(tmp_path: Path) -> None:
    path = tmp_path / "kek.json"
    with pytest.raises(KeyUnavailable, match="does not exist"):
        FileKeyProvider(path)
    provider = FileKeyProvider(path, create=True)
    assert path.stat().st_mode & 0o777 == 0o600
    data = json.loads(path.read_text())
    assert list(data["keys"]) == [data["current"]] == [provider.current]
    assert FileKeyProvider(path, create=True).keys == provider.keys      # create never replaces an existing key
    for bad in ("{", '{"keys": {}}', '{"current": "x", "keys": []}', '{"current": "x", "keys": {"x": "AA"}}'):
        path.write_text(bad)
        with pytest.raises(ConfigError, match="not a valid key file"):
            FileKeyProvider(path)


def test_rotation_and_retirement(tmp_path: Path) -> None:
    path = tmp_path / "kek.json"
    provider = FileKeyProvider(path, create=True)
    first = provider.current
    _, wrapped = provider.wrap(b"d" * 32, b"ns")
    second = provider.rotate()
    assert second != first and provider.current == second and set(provider.keys) == {first, second}
    assert json.loads(path.read_text())["current"] == second and path.stat().st_mode & 0o777 == 0o600
    assert provider.unwrap(first, wrapped, b"ns") == b"d" * 32          # old keys still unwrap
    assert provider.retire({second}) == [first] and set(provider.keys) == {second}
    assert provider.retire(set()) == [] and set(provider.keys) == {second}   # never the current one
    with pytest.raises(KeyUnavailable):
        provider.unwrap(first, wrapped, b"ns")


def test_another_process_rotation_is_followed_within_recheck(tmp_path: Path) -> None:
    path = tmp_path / "kek.json"
    server = FileKeyProvider(path, create=True, recheck=0.2)
    old = server.current
    operator = FileKeyProvider(path)
    new = operator.rotate()
    assert server.current_key_id() == old                             # within recheck: not re-read yet
    time.sleep(0.25)
    assert server.current_key_id() == new
    newer = operator.rotate()
    time.sleep(0.25)
    assert server.wrap(b"d" * 32, b"ns")[0] == newer                  # wrap follows the file too
    _, wrapped = operator.wrap(b"e" * 32, b"ns")
    latest = operator.rotate()
    key_id, wrapped = operator.wrap(b"e" * 32, b"ns")
    assert key_id == latest
    assert server.unwrap(latest, wrapped, b"ns") == b"e" * 32         # an unknown id re-reads the file at once
    os.unlink(path)
    time.sleep(0.25)
    assert server.current_key_id() == latest                           # a removed file keeps the loaded keys


def test_messages_name_the_missing_key_and_the_file(tmp_path: Path, monkeypatch) -> None:
    """An operator at 3 a.m. needs the path and the next step, not `None`."""
    with pytest.raises(KeyUnavailable, match="^no key-encryption key configured$"):
        StaticKeyProvider({})
    path = tmp_path / "kek.json"
    with pytest.raises(KeyUnavailable, match=f"key file '{path}' does not exist \\(create one with `cellmono keys "
                                             "rotate --create`\\)"):
        FileKeyProvider(path)
    path.write_text('{"current": "x", "keys": {"x": "AA"}}')
    with pytest.raises(ConfigError, match=f"key file '{path}', key 'x': key must be 32 bytes"):
        FileKeyProvider(path)
    path.write_text("[]")
    with pytest.raises(ConfigError, match=f"key file '{path}' is not a valid key file"):
        FileKeyProvider(path)
    monkeypatch.delenv("CELLMONO_KEK", raising=False)
    with pytest.raises(KeyUnavailable, match="generate one with `cellmono keys new`"):
        EnvKeyProvider()
    monkeypatch.setenv("CELLMONO_KEK", f"env:{text(A)}")
    assert EnvKeyProvider().current == "env"                         # os.environ when none is given
    with pytest.raises(WrongKey, match="wrong key for this id, or the wrapped key is corrupted"):
        StaticKeyProvider({"k": A}).unwrap("k", b"\x00" * 40, b"")


def test_following_keeps_checking_after_a_quiet_period(tmp_path: Path) -> None:
    path = tmp_path / "kek.json"
    server = FileKeyProvider(path, create=True, recheck=0.05)
    first = server.current
    for _ in range(3):                                               # nothing changed: checks keep working
        time.sleep(0.06)
        assert server.current_key_id() == first
    path.unlink()
    for _ in range(2):                                               # file gone: loaded keys kept, checks go on
        time.sleep(0.06)
        assert server.current_key_id() == first
