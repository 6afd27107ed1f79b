"""fetch keeps its deadlines against a real local server that drips: one byte a second in the body, or in the
headers, is cut off at the fetch deadline, or at the run's wall deadline when that comes first; a redirect chain
counts against the same deadline. A socket timeout alone bounds one read, which a drip never trips.

Host tools are rate-limited: a guest looping on a host tool is stopped at the limit with `LimitExceeded` and an
audit record, and the host keeps answering."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from cellmono.sandbox.hosttools import fetch_blocking
from cellmono.sandbox.policy import DeadlineExceeded, LimitExceeded, Policy
from cellmono.sandbox.runner import Sandbox

pytestmark = pytest.mark.anyio
DRIP_SECONDS = 40  # the server gives up after this; every deadline under test is far shorter


class _Dripping(BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass

    def _drip(self, data: bytes) -> None:
        for byte in data:
            try:
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
            except OSError:
                return
            time.sleep(1)

    def do_GET(self) -> None:
        if self.path == "/drip-body":
            self.send_response(200)
            self.send_header("Content-Length", str(DRIP_SECONDS))
            self.end_headers()
            self._drip(b"x" * DRIP_SECONDS)
        elif self.path == "/drip-headers":
            self.wfile.write(b"HTTP/1.1 200 OK\r\n")
            self._drip(b"X-Slow: " + b"y" * DRIP_SECONDS)
        elif self.path.startswith("/hop/"):  # each hop answers after 0.5 s, then sends the client on
            time.sleep(0.5)
            left = int(self.path.rsplit("/", 1)[1])
            self.send_response(302 if left else 200)
            self.send_header("Location", f"/hop/{left - 1}")
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")
        else:
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")


@pytest.fixture(scope="module")
def server() -> Iterator[int]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Dripping)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd.server_address[1]
    httpd.shutdown()
    httpd.server_close()


def _policy(port: int, **limits: object) -> Policy:
    return Policy.from_capabilities([f"net:fetch:127.0.0.1:{port}"], **limits)


def _timed_fetch(url: str, policy: Policy, deadline: float | None = None) -> tuple[BaseException | None, float]:
    started = time.monotonic()
    try:
        fetch_blocking(url, policy, deadline=deadline)
    except Exception as error:  # noqa: BLE001 - the test inspects it
        return error, time.monotonic() - started
    return None, time.monotonic() - started


@pytest.mark.parametrize("path", ["/drip-body", "/drip-headers"])
def test_a_dripping_server_is_cut_off_at_the_fetch_deadline(server: int, path: str) -> None:
    error, elapsed = _timed_fetch(f"http://127.0.0.1:{server}{path}", _policy(server, fetch_seconds=1.5))
    assert isinstance(error, LimitExceeded) and error.limit == "fetch_time", error
    assert 1.4 <= elapsed < 2.5, elapsed


def test_the_callers_deadline_cuts_first(server: int) -> None:
    error, elapsed = _timed_fetch(f"http://127.0.0.1:{server}/drip-body", _policy(server, fetch_seconds=30),
                                  deadline=time.monotonic() + 1.0)
    assert isinstance(error, LimitExceeded) and error.limit == "fetch_time", error
    assert elapsed < 2.0, elapsed


def test_a_redirect_chain_counts_against_the_same_deadline(server: int) -> None:
    ok, _ = _timed_fetch(f"http://127.0.0.1:{server}/hop/2", _policy(server, fetch_seconds=5))
    assert ok is None  # three hops of 0.5 s fit in 5 s
    error, elapsed = _timed_fetch(f"http://127.0.0.1:{server}/hop/5", _policy(server, fetch_seconds=1.2))
    assert isinstance(error, LimitExceeded) and error.limit == "fetch_time", error
    assert elapsed < 1.9, elapsed  # one deadline for the chain, not 1.2 s per hop


@pytest.fixture(params=["wasm", "bubblewrap"])
async def sandbox(request: pytest.FixtureRequest) -> Iterator[tuple[Sandbox, list[dict]]]:
    audit: list[dict] = []
    box = Sandbox(backend=request.param, audit=audit.append, principal="looper")
    status = await box.backend().status()
    if not status.available:
        if os.environ.get("CI") == "true" or request.param == "wasm":
            pytest.fail(f"{request.param} unavailable: {status.reason}")
        pytest.skip(f"{request.param} unavailable: {status.reason}")
    yield box, audit
    await box.close()


async def test_the_runs_wall_deadline_cuts_a_fetch_in_progress(sandbox, server: int) -> None:
    box, _ = sandbox
    policy = _policy(server, fetch_seconds=30, wall_seconds=2)
    started = time.monotonic()
    with pytest.raises((DeadlineExceeded, LimitExceeded)):
        await box.run_python(f"tools.fetch('http://127.0.0.1:{server}/drip-body')", policy=policy)
    assert time.monotonic() - started < 4.5  # the wall deadline (2 s), not the fetch deadline (30 s)
    assert (await box.run_python("6 * 7", policy=policy)).value == 42


async def test_a_guest_looping_on_a_host_tool_is_stopped_at_the_limit(sandbox, server: int) -> None:
    box, audit = sandbox
    policy = _policy(server, tool_calls=10, tool_rate=1000, wall_seconds=20)
    code = f"while True:\n    tools.fetch('http://127.0.0.1:{server}/ok')\n"
    with pytest.raises(LimitExceeded) as caught:
        await box.run_python(code, policy=policy)
    assert caught.value.limit == "tool_calls"
    tool_records = [record for record in audit if record["event"] == "sandbox.tool"]
    assert [record["decision"] for record in tool_records] == ["allow"] * 10 + ["deny"]
    assert tool_records[-1]["reason"] == "tool-call limit" and tool_records[-1]["principal"] == "looper"
    assert audit[-1]["event"] == "sandbox.run" and audit[-1]["outcome"] == "LimitExceeded"
    assert (await box.run_python("6 * 7", policy=policy)).value == 42  # the host keeps serving


async def test_a_looping_guest_is_paced_to_the_rate(sandbox, server: int) -> None:
    box, _ = sandbox
    policy = _policy(server, tool_calls=1000, tool_rate=10, wall_seconds=20)
    started = time.monotonic()
    result = await box.run_python(
        f"for _ in range(15):\n    tools.fetch('http://127.0.0.1:{server}/ok')\n'done'", policy=policy)
    assert result.value == "done" and result.usage.tool_calls == 15
    assert time.monotonic() - started >= 0.45  # 10 in the burst, then 5 at 10 a second
