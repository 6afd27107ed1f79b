"""Host tools against a real loopback web server: an IP-literal grant reaches it; the same server under a name
that resolves to loopback, redirects to such names or to link-local metadata, and decimal IP spellings are refused
at every hop; a body over `fetch_bytes` is a limit; guests get JSON replies; every call is audited, allowed or not.
(Moved from the `sandbox.hosttools` notebook, where the URL and file checks are shown one by one.)"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from cellmono.sandbox.hosttools import HostTools
from cellmono.sandbox.policy import LimitExceeded, Policy, SandboxDenied

pytestmark = pytest.mark.anyio


class _Site(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path.startswith("/redirect"):
            self.send_response(302)
            self.send_header("Location", self.path.split("to=", 1)[1])
            self.end_headers()
            return
        body = b"x" * 5000 if self.path == "/big" else b"hello"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Site)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()


def _web(port: int) -> Policy:
    return Policy.from_capabilities([f"net:fetch:127.0.0.1:{port}", f"net:fetch:localhost:{port}"], fetch_bytes=4096)


def _refused_urls(port: int) -> list[str]:
    return [f"http://localhost:{port}/", f"http://127.0.0.1:{port}/redirect?to=http://localhost:{port}/",
            f"http://127.0.0.1:{port}/redirect?to=http://169.254.169.254/latest", f"http://2130706433:{port}/"]


async def test_an_ip_literal_grant_reaches_the_loopback_server(port: int) -> None:
    fetched = await HostTools().call("fetch", {"url": f"http://127.0.0.1:{port}/hello"}, _web(port))
    assert fetched["status"] == 200 and fetched["body"] == "hello"


@pytest.mark.parametrize("which", range(4), ids=["name to loopback", "redirect to a name to loopback",
                                                 "redirect to link-local metadata", "decimal IP"])
async def test_loopback_by_name_redirects_and_odd_spellings_are_refused(port: int, which: int) -> None:
    with pytest.raises(SandboxDenied):
        await HostTools().call("fetch", {"url": _refused_urls(port)[which]}, _web(port))


async def test_a_body_over_fetch_bytes_is_a_limit(port: int) -> None:
    with pytest.raises(LimitExceeded) as caught:
        await HostTools().call("fetch", {"url": f"http://127.0.0.1:{port}/big"}, _web(port))
    assert caught.value.limit == "fetch_size"


async def test_guests_get_json_refusals_never_exceptions(port: int) -> None:
    tools, web = HostTools(), _web(port)
    reply = json.loads(await tools.handle("fetch", json.dumps({"url": f"http://localhost:{port}/"}), web))
    assert reply["type"] == "SandboxDenied"
    assert json.loads(await tools.handle("shell", "{}", web))["type"] == "SandboxDenied"
    assert json.loads(await tools.handle("fetch", "[1]", web))["type"] == "SandboxDenied"
    assert json.loads(await tools.handle("fetch", json.dumps({"url": 1}), web))["type"] == "SandboxDenied"


async def test_every_call_is_audited_allowed_or_not(port: int) -> None:
    audit_records: list[dict[str, Any]] = []
    tools, web = HostTools(audit=audit_records.append, principal="bob"), _web(port)
    await tools.call("fetch", {"url": f"http://127.0.0.1:{port}/hello"}, web)
    for url in _refused_urls(port):
        with pytest.raises(SandboxDenied):
            await tools.call("fetch", {"url": url}, web)
    with pytest.raises(LimitExceeded):
        await tools.call("fetch", {"url": f"http://127.0.0.1:{port}/big"}, web)
    await tools.handle("fetch", json.dumps({"url": f"http://localhost:{port}/"}), web)
    await tools.handle("shell", "{}", web)
    await tools.handle("fetch", "[1]", web)
    await tools.handle("fetch", json.dumps({"url": 1}), web)
    decisions = [record["decision"] for record in audit_records]
    assert decisions[0] == "allow" and decisions.count("deny") == 8
    assert decisions.count("error") == 1  # the body limit: an error, not a denial
    assert all(record["principal"] == "bob" for record in audit_records)
