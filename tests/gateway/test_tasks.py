"""The tasks extension (SEP-2663) against a real `cellmono serve`: a task survives a restart, nobody sees another's
tasks, a cancel stops the work, and the 2025-11-25 wire serves `tasks/result` and `tasks/list`."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx

from tests.gateway_support import CELLMONO, ROOT, mcp_json, serve, state_environment

EXTENSION = "io.modelcontextprotocol/tasks"
DECLARED = {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientCapabilities": {"extensions": {EXTENSION: {}}}}
PATH = {"PYTHONPATH": str(ROOT)}  # the settings name the example cell by its module path
SETTINGS = """[app]
name = tasks-test
cells = tasks

[bus]
transport = memory

[security]
role.admin = *:*
role.caller = tool:call:tasks.slow_compute
role.reader = tool:call:tasks.slow_compute, task:read:tasks.slow_compute

[cell.tasks]
class = examples.conformance.conformance_cells:TasksCell

[gateway]
bare_names = true
"""


def settings_file(state: Path) -> Path:
    path = state / "settings.ini"
    path.write_text(SETTINGS)
    return path


def new_key(state: Path, name: str, role: str) -> str:
    env = {**os.environ, **state_environment(state), **PATH}
    done = subprocess.run([CELLMONO, "serve", "--settings", str(state / "settings.ini"), "--new-key", name, "--role", role],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=True)
    return done.stdout.strip().splitlines()[-1]


def rpc(url: str, key: str, method: str, params: dict[str, Any], meta: dict[str, Any] | None = None,
        name: str | None = None) -> dict[str, Any]:
    """One 2026-07-28 request; the JSON-RPC response (result or error)."""
    headers = {"MCP-Protocol-Version": "2026-07-28", "Mcp-Method": method, "Authorization": f"Bearer {key}",
               "Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
    if name is not None:
        headers["Mcp-Name"] = name
    body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": {**params, "_meta": meta or DECLARED}}
    answer = httpx.post(url, headers=headers, content=json.dumps(body), timeout=30)
    assert answer.status_code < 500, answer.text
    return answer.json()


def call(url: str, key: str, tool: str, arguments: dict[str, Any], meta: dict[str, Any] | None = None) -> dict[str, Any]:
    return rpc(url, key, "tools/call", {"name": tool, "arguments": arguments}, meta, name=tool)


def task_get(url: str, key: str, task_id: str) -> dict[str, Any]:
    return rpc(url, key, "tasks/get", {"taskId": task_id}, name=task_id)


def until(url: str, key: str, task_id: str, statuses: tuple[str, ...], timeout: float = 15) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = task_get(url, key, task_id)["result"]
        if found["status"] in statuses:
            return found
        time.sleep(0.05)
    raise AssertionError(f"task {task_id} never reached {statuses}")


def audit(state: Path) -> list[dict[str, Any]]:
    env = {**os.environ, **state_environment(state), **PATH}
    done = subprocess.run([CELLMONO, "audit", "export", "--settings", str(state / "settings.ini")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60, check=True)
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def test_a_task_survives_a_gateway_restart(tmp_path: Path) -> None:
    settings = settings_file(tmp_path)
    with serve(tmp_path, "--settings", str(settings), environment=PATH) as running:
        created = call(running.url, running.key, "slow_compute", {"seconds": 0.2, "label": "durable"})["result"]
        assert created["resultType"] == "task" and created["status"] == "working"
        assert task_get(running.url, running.key, created["taskId"])["result"]["taskId"] == created["taskId"]
        done = until(running.url, running.key, created["taskId"], ("completed",))
        interrupted = call(running.url, running.key, "slow_compute", {"seconds": 60})["result"]["taskId"]
        key = running.key
    raw = (tmp_path / "store.sqlite").read_bytes()
    assert b"Computed durable" not in raw  # sealed by the store's key
    with serve(tmp_path, "--settings", str(settings), environment=PATH) as running:
        again = task_get(running.url, key, created["taskId"])["result"]
        assert again["status"] == "completed" and again["result"] == done["result"]
        assert "Computed durable after 0.2s" in again["result"]["content"][0]["text"]
        lost = task_get(running.url, key, interrupted)["result"]
        assert lost["status"] == "failed" and "restarted" in lost["error"]["message"]


def test_nobody_sees_another_principals_tasks(tmp_path: Path) -> None:
    settings = settings_file(tmp_path)
    alice, mallory = new_key(tmp_path, "alice", "admin"), new_key(tmp_path, "mallory", "admin")
    with serve(tmp_path, "--settings", str(settings), environment=PATH) as running:
        running.key = alice
        task_id = call(running.url, running.key, "slow_compute", {"seconds": 30})["result"]["taskId"]
        unknown = task_get(running.url, mallory, "no-such-task")["error"]
        for method, params in (("tasks/get", {"taskId": task_id}), ("tasks/cancel", {"taskId": task_id}),
                               ("tasks/update", {"taskId": task_id, "inputResponses": {}})):
            refused = rpc(running.url, mallory, method, params, name=task_id)["error"]
            assert refused["code"] == unknown["code"] == -32602 and refused["message"] == unknown["message"]
        assert task_get(running.url, running.key, task_id)["result"]["status"] == "working"  # mallory's cancel did nothing
        rpc(running.url, running.key, "tasks/cancel", {"taskId": task_id}, name=task_id)
    refusals = [r for r in audit(tmp_path) if r["actor"] == "mallory" and r["action"].startswith("gateway.tasks/")]
    assert len(refusals) == 4 and all(r["outcome"] == "invalid" and "unknown task" in r["reason"] for r in refusals)


def test_task_capabilities_are_checked(tmp_path: Path) -> None:
    settings = settings_file(tmp_path)
    caller, reader = new_key(tmp_path, "carol", "caller"), new_key(tmp_path, "rita", "reader")
    with serve(tmp_path, "--settings", str(settings), environment=PATH) as running:
        own = call(running.url, caller, "slow_compute", {"seconds": 0})["result"]["taskId"]
        assert task_get(running.url, caller, own)["error"]["code"] == -32003  # no task:read:tasks.slow_compute
        readable = call(running.url, reader, "slow_compute", {"seconds": 0})["result"]["taskId"]
        assert until(running.url, reader, readable, ("completed",))["status"] == "completed"
        cancel = rpc(running.url, reader, "tasks/cancel", {"taskId": readable}, name=readable)["error"]
        assert cancel["code"] == -32003 and "task:cancel:tasks.slow_compute" in cancel["message"]


def test_negotiation_and_wire_rules(tmp_path: Path) -> None:
    settings = settings_file(tmp_path)
    plain = {"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}}
    with serve(tmp_path, "--settings", str(settings), environment=PATH) as running:
        url, key = running.url, running.key
        sync = call(url, key, "slow_compute", {"seconds": 0, "label": "sync"}, meta=plain)["result"]
        assert "taskId" not in sync and sync["content"][0]["text"].startswith("Computed sync")
        required = call(url, key, "failing_job", {}, meta=plain)["error"]
        assert required["code"] == -32021 and EXTENSION in required["data"]["requiredCapabilities"]["extensions"]
        assert rpc(url, key, "tasks/get", {"taskId": "x"}, meta=plain, name="x")["error"]["code"] == -32021
        assert rpc(url, key, "tasks/get", {"taskId": "x"}, name="x")["error"]["code"] == -32602
        assert rpc(url, key, "tasks/result", {"taskId": "x"})["error"]["code"] == -32601
        assert rpc(url, key, "tasks/list", {})["error"]["code"] == -32601
        task_id = call(url, key, "slow_compute", {"seconds": 30})["result"]["taskId"]
        mismatch = rpc(url, key, "tasks/get", {"taskId": task_id}, name="another-id")["error"]
        assert mismatch["code"] == -32020
        failed = until(url, key, call(url, key, "protocol_error_job", {})["result"]["taskId"], ("failed", "completed"))
        assert failed["status"] == "failed" and "result" not in failed and isinstance(failed["error"]["code"], int)
        tool_error = until(url, key, call(url, key, "failing_job", {})["result"]["taskId"], ("failed", "completed"))
        assert tool_error["status"] == "completed" and tool_error["result"]["isError"] is True
        rpc(url, key, "tasks/cancel", {"taskId": task_id}, name=task_id)


def test_cancel_stops_the_cells_work(tmp_path: Path) -> None:
    settings = settings_file(tmp_path)
    with serve(tmp_path, "--settings", str(settings), environment=PATH) as running:
        url, key = running.url, running.key
        task_id = call(url, key, "slow_compute", {"seconds": 60, "label": "long"})["result"]["taskId"]
        time.sleep(0.2)
        ack = rpc(url, key, "tasks/cancel", {"taskId": task_id}, name=task_id)["result"]
        assert ack == {"resultType": "complete", **({"_meta": ack["_meta"]} if "_meta" in ack else {})}
        assert until(url, key, task_id, ("cancelled", "completed", "failed"), timeout=5)["status"] == "cancelled"
        again = rpc(url, key, "tasks/cancel", {"taskId": task_id}, name=task_id)["result"]  # idempotent
        assert again["resultType"] == "complete"
    records = [r for r in audit(tmp_path) if r.get("reason") == f"task {task_id} cancelled"]
    assert records, "the cell's work was not reported as cancelled"


def session(url: str, key: str) -> Any:
    """A 2025-11-25 session that declared the extension: a function sending one request on it."""
    headers = {"Authorization": f"Bearer {key}", "Accept": "application/json, text/event-stream",
               "Content-Type": "application/json"}
    hello = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {"extensions": {EXTENSION: {}}},
        "clientInfo": {"name": "test", "version": "1"}}}
    answer = httpx.post(url, headers=headers, content=json.dumps(hello), timeout=30)
    headers = {**headers, "Mcp-Session-Id": answer.headers["mcp-session-id"], "MCP-Protocol-Version": "2025-11-25"}
    httpx.post(url, headers=headers, content=json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}), timeout=30)

    def send(method: str, params: dict[str, Any]) -> dict[str, Any]:
        body = {"jsonrpc": "2.0", "id": 2, "method": method, "params": params}
        return mcp_json(httpx.post(url, headers=headers, content=json.dumps(body), timeout=30))
    return send


def test_the_2025_wire_serves_result_and_list_of_ones_own_tasks(tmp_path: Path) -> None:
    settings = settings_file(tmp_path)
    alice, bob = new_key(tmp_path, "alice", "admin"), new_key(tmp_path, "bob", "admin")
    with serve(tmp_path, "--settings", str(settings), environment=PATH) as running:
        url = running.url
        mine = call(url, alice, "slow_compute", {"seconds": 0.3, "label": "old-wire"})["result"]["taskId"]
        theirs = call(url, bob, "slow_compute", {"seconds": 0})["result"]["taskId"]
        old = session(url, alice)
        assert "Computed old-wire" in old("tasks/result", {"taskId": mine})["result"]["content"][0]["text"]
        assert [t["taskId"] for t in old("tasks/list", {})["result"]["tasks"]] == [mine]
        assert old("tasks/result", {"taskId": theirs})["error"]["code"] == -32602
        sync = old("tools/call", {"name": "slow_compute", "arguments": {"seconds": 0, "label": "s"}})["result"]
        assert "taskId" not in sync and not sync["isError"]  # no task is created on the 2025-11-25 wire
        assert old("tools/call", {"name": "failing_job", "arguments": {}})["error"]["code"] == -32021
