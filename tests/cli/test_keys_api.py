"""`cellmono keys api list|new|revoke`: live API key management against a running `cellmono serve`.

A revoke takes effect in the running server within a second, without a restart, and stays revoked
across restarts; concurrent `new` calls (separate processes) never lose a key."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from cellmono.gateway.auth import ApiKeys, Unauthenticated
from cellmono.security.audit import AuditLog
from gateway_support import ROOT, modern_request, serve, state_environment

CELLMONO = str(Path(sys.executable).with_name("cellmono"))


def keys_cli(state: Path, *args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **state_environment(state)}
    return subprocess.run([CELLMONO, "keys", "api", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=60)


def call(url: str, key: str) -> int:
    headers, body = modern_request("tools/call", {"name": "digest.summary", "arguments": {}}, key=key)
    with httpx.Client(timeout=10) as http:
        return http.post(url, headers=headers, content=body).status_code


def test_list_new_revoke_round_trip(tmp_path: Path) -> None:
    state = tmp_path / "state"
    assert "no API keys" in keys_cli(state, "list").stdout
    created = keys_cli(state, "new", "bob", "--role", "admin")
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    assert key.startswith("cmk_") and key.count("\n") == 0
    listing = keys_cli(state, "list")
    assert listing.returncode == 0 and "bob  id=" in listing.stdout and "roles=admin" in listing.stdout
    assert key not in listing.stdout and key.split("_", 2)[2] not in listing.stdout  # never the key, nor its secret (which may hold "_")
    assert ApiKeys(state / "api-keys.json").identify(key).principal == "bob"
    assert oct((state / "api-keys.json").stat().st_mode & 0o777) == "0o600"
    unknown = keys_cli(state, "new", "eve", "--role", "root")
    assert unknown.returncode == 2 and "unknown role 'root'" in unknown.stderr and "Traceback" not in unknown.stderr
    revoked = keys_cli(state, "revoke", "bob")
    assert revoked.returncode == 0 and "revoked 1 API key of 'bob'" in revoked.stdout
    again = keys_cli(state, "revoke", "bob")
    assert again.returncode == 2 and "no API key of 'bob'" in again.stderr
    assert "bob" not in keys_cli(state, "list").stdout
    try:
        ApiKeys(state / "api-keys.json").identify(key)
    except Unauthenticated:
        pass
    else:
        raise AssertionError("a revoked key still authenticates")
    with AuditLog(state / "audit.sqlite", create=False) as log:
        actions = [(entry.fields["action"], entry.fields["resource"]) for entry in log.entries()]
    assert ("key.api.new", "bob") in actions and ("key.api.revoke", "bob") in actions


def test_concurrent_new_calls_never_lose_a_key(tmp_path: Path) -> None:
    state = tmp_path / "state"
    names = [f"user{index}" for index in range(8)]
    with ThreadPoolExecutor(len(names)) as pool:
        results = list(pool.map(lambda name: keys_cli(state, "new", name, "--role", "admin"), names))
    assert all(result.returncode == 0 for result in results), [result.stderr for result in results]
    keys = ApiKeys(state / "api-keys.json")
    assert sorted(entry["principal"] for entry in keys.entries().values()) == names
    for name, result in zip(names, results):
        assert keys.identify(result.stdout.strip()).principal == name


def test_a_revoke_takes_effect_in_the_running_server_within_a_second_and_survives_a_restart(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with serve(state, timeout=120) as running:
        created = keys_cli(state, "new", "bob", "--role", "admin")
        key = created.stdout.strip()
        assert call(running.url, key) == 200  # a key made after the server started works at once
        assert call(running.url, key) == 200
        assert keys_cli(state, "revoke", "bob").returncode == 0
        revoked_at = time.monotonic()
        while call(running.url, key) != 401:
            assert time.monotonic() - revoked_at < 1.0, "the revoked key still works after 1 s"
            time.sleep(0.05)
        assert call(running.url, running.key) == 200  # the others keep working
    with serve(state, timeout=120) as restarted:
        assert call(restarted.url, key) == 401
