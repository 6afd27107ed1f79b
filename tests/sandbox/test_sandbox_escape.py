"""Escape suite: every attack against every available sandbox backend ends in a typed error, leaks
nothing, and the host keeps serving. WASM and bubblewrap are required (the project's `[dev]` extra
installs them). gVisor is required under CI (`.ci/system-packages` installs runsc and CI runs as
root); elsewhere its tests are skipped, with the reason, only when runsc cannot run here.

Each attack gets a fresh box, as in production, one after the other: gVisor adds ~0.3 s a run
(~30 s for the file). Running boxes concurrently on this 2-core machine would save little and makes
the CPU-limit attacks race their wall deadline (three concurrent infinite loops: one ends in
DeadlineExceeded instead of the CPU LimitExceeded), and sharing a box between attacks would let one
attack's damage decide the next one's outcome."""
from __future__ import annotations

import os
import shutil
import socket
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from cellmono.core.errors import CellmonoError
from cellmono.sandbox.policy import (DeadlineExceeded, GuestError, LimitExceeded, Policy, SandboxCrashed, SandboxDenied,
                                     SandboxError)
from cellmono.sandbox.runner import Sandbox

SECRET = "cellmono-escape-canary-7f3a9c"
os.environ["CELLMONO_TEST_SECRET"] = SECRET  # set before any backend starts: guests must not see it
IN_CI = os.environ.get("CI") == "true"


@pytest.fixture(scope="module")
def anyio_backend():
    return "asyncio"


BACKEND_NAMES = ["wasm", "bubblewrap", "gvisor"]
REQUIRED_EVERYWHERE = {"wasm", "bubblewrap"}  # installed by the [dev] extra


class _Site(BaseHTTPRequestHandler):
    hits: list[str] = []

    def do_GET(self) -> None:
        _Site.hits.append(f"{self.server.server_address[1]}{self.path}")
        if self.path.startswith("/redirect"):
            self.send_response(302)
            self.send_header("Location", self.path.split("to=", 1)[1])
            self.end_headers()
            return
        body = b"public page"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def world():
    """Files, a key file, a loopback listener and two loopback web servers the attacks aim at."""
    root = Path(tempfile.mkdtemp(prefix="cellmono-escape-"))  # reachable by `nobody`, who runs the native boxes
    os.chmod(root, 0o755)
    (root / "granted").mkdir()
    (root / "out").mkdir()
    os.chmod(root / "out", 0o777)
    key = root / "app.key"
    key.write_text(SECRET)
    os.chmod(key, 0o644)  # readable by anyone on the host: only the sandbox must stop the read
    (root / "granted" / "ok.txt").write_text("fine")
    os.chmod(root / "granted" / "ok.txt", 0o644)
    (root / "granted" / "link.txt").symlink_to(key)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.setblocking(False)
    servers = [ThreadingHTTPServer(("127.0.0.1", 0), _Site) for _ in range(2)]
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    yield {"root": root, "key": key, "listener": listener, "web": servers[0].server_address[1],
           "internal": servers[1].server_address[1]}
    for server in servers:
        server.shutdown()
    listener.close()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
async def sandboxes():
    """Every backend, probed once; an unusable one is kept as (reason, installed here?), decided per test."""
    audit: list[dict] = []
    created: dict[str, Sandbox | tuple[str, bool]] = {}
    for name in BACKEND_NAMES:
        sandbox = Sandbox(backend=name, audit=audit.append, principal="attacker")
        backend = sandbox.backend()
        status = await backend.status()
        if status.available:
            created[name] = sandbox
        else:
            missing = getattr(backend, "unavailable_reason", lambda: "")()  # no runsc, not root, no python
            created[name] = (status.reason or "unavailable", not missing)
            await sandbox.close()
    yield created, audit
    for sandbox in created.values():
        if isinstance(sandbox, Sandbox):
            await sandbox.close()


def _usable(created: dict[str, Sandbox | tuple[str, bool]], backend: str) -> Sandbox:
    """The backend's sandbox. Unusable: fail under CI, when always required or when installed but
    broken; skip, with the reason, only when its prerequisites are genuinely absent outside CI."""
    sandbox = created[backend]
    if isinstance(sandbox, Sandbox):
        return sandbox
    reason, installed = sandbox
    message = f"sandbox backend {backend} unavailable: {reason}"
    if IN_CI or backend in REQUIRED_EVERYWHERE or installed:
        pytest.fail(message)
    pytest.skip(message)


def _policy(world, **limits) -> Policy:
    root = world["root"]
    capabilities = [f"fs:read:{root}/granted/*", f"fs:write:{root}/out/*", f"net:fetch:127.0.0.1:{world['web']}",
                    f"net:fetch:localhost:{world['internal']}"]
    base = {"fuel": 3_000_000_000, "cpu_seconds": 2, "wall_seconds": 3, "memory_bytes": 256 << 20,
            "output_bytes": 64 << 10, "processes": 16}
    return Policy.from_capabilities(capabilities, **{**base, **limits})


ATTACKS: list[tuple[str, str, dict, tuple[type[BaseException], ...]]] = [
    ("read /etc/passwd", "open('/etc/passwd').read()", {}, (SandboxError, SandboxDenied)),
    ("read /etc/shadow", "open('/etc/shadow').read()", {}, (SandboxError, SandboxDenied)),
    ("read the app key file", "open('{key}').read()", {}, (SandboxError, SandboxDenied)),
    ("host tool: read /etc/passwd", "tools.read_file('/etc/passwd')", {}, (SandboxDenied,)),
    ("host tool: read the key file", "tools.read_file('{key}')", {}, (SandboxDenied,)),
    ("host tool: write outside the grant", "tools.write_file('{root}/pwned.txt', 'x')", {}, (SandboxDenied,)),
    ("direct write into a read-only grant", "open('{root}/granted/pwned-direct.txt', 'w').write('x')", {},
     (SandboxError, SandboxDenied)),
    ("direct write to /etc", "open('/etc/cellmono-pwned', 'w').write('x')", {}, (SandboxError, SandboxDenied)),
    ("host tool: '..' escape", "tools.read_file('{root}/granted/../app.key')", {}, (SandboxDenied,)),
    ("host tool: symlink escape", "tools.read_file('{root}/granted/link.txt')", {}, (SandboxDenied,)),
    ("socket to a loopback listener",
     "import socket\ns = socket.create_connection(('127.0.0.1', {listener_port}), timeout=1)", {}, (SandboxError, SandboxDenied)),
    ("DNS lookup", "import socket\nsocket.getaddrinfo('localhost', 80)", {}, (SandboxError, SandboxDenied)),
    ("environment-variable secrets", "import os\nos.environ['CELLMONO_TEST_SECRET']", {}, (SandboxError, SandboxDenied)),
    ("parent environment through /proc",
     "import os\ndata = open(f'/proc/{{os.getppid()}}/environ').read()\nassert '{secret}' in data, 'not found'\ndata",
     {}, (SandboxError, SandboxDenied)),
    ("fork bomb", "import os\nwhile True:\n    os.fork()", {}, (SandboxError, SandboxDenied)),
    ("infinite loop", "while True:\n    pass", {}, (LimitExceeded,)),
    ("memory bomb at once", "x = bytearray(8 * 1024 ** 3)", {}, (LimitExceeded, SandboxError)),
    ("memory bomb growing", "chunks = []\nwhile True:\n    chunks.append(bytearray(16 * 1024 ** 2))", {},
     (LimitExceeded, SandboxError)),
    ("huge output at once", "print('x' * 50_000_000)", {}, (LimitExceeded,)),
    ("huge output in a loop", "while True:\n    print('y' * 10_000)", {}, (LimitExceeded,)),
    ("ctypes libc open", "import ctypes, os\nfd = ctypes.CDLL(None).open(b'{key}', 0)\nassert fd >= 0, 'blocked'\nos.read(fd, 100)",
     {}, (SandboxError, SandboxDenied)),
    ("os.system", "import os\nstatus = os.system('cat {key}')\nassert status == 0, 'blocked'", {}, (SandboxError, SandboxDenied)),
    ("subprocess", "import subprocess\nsubprocess.run(['cat', '{key}'], check=True, capture_output=True).stdout",
     {}, (SandboxError, SandboxDenied)),
    ("fetch 127.0.0.1 (not granted)", "tools.fetch('http://127.0.0.1:{internal}/')", {}, (SandboxDenied,)),
    ("fetch decimal IP", "tools.fetch('http://2130706433:{web}/')", {}, (SandboxDenied,)),
    ("fetch hex IP", "tools.fetch('http://0x7f000001:{web}/')", {}, (SandboxDenied,)),
    ("fetch user@host", "tools.fetch('http://user@127.0.0.1:{web}/')", {}, (SandboxDenied,)),
    ("fetch a name resolving to loopback", "tools.fetch('http://localhost:{internal}/')", {}, (SandboxDenied,)),
    ("fetch redirect to a private address",
     "tools.fetch('http://127.0.0.1:{web}/redirect?to=http://localhost:{internal}/admin')", {}, (SandboxDenied,)),
    ("fetch redirect to link-local metadata",
     "tools.fetch('http://127.0.0.1:{web}/redirect?to=http://169.254.169.254/latest/meta-data')", {}, (SandboxDenied,)),
    ("sleep past the deadline", "import time\ntime.sleep(30)", {"wall_seconds": 1.5}, (DeadlineExceeded, SandboxDenied, LimitExceeded)),
    ("busy past the deadline", "while True:\n    pass", {"wall_seconds": 1.0, "fuel": 10**13, "cpu_seconds": 30},
     (DeadlineExceeded,)),
    ("corrupt the interpreter: unbounded recursion",
     "import sys\nsys.setrecursionlimit(10**9)\ndef f(n):\n    return f(n + 1)\nf(0)", {}, (LimitExceeded, SandboxCrashed, GuestError)),
    ("corrupt the interpreter: wipe builtins and modules",
     "import builtins, sys\nsys.modules.clear()\nbuiltins.__dict__.clear()\nprint('still here')", {}, (SandboxError,)),
    ("corrupt the interpreter: forged code object",
     "f = lambda: 0\nf.__code__ = f.__code__.replace(co_code=bytes([255, 255] * 8), co_consts=())\nf()", {},
     (SandboxError,)),
]


@pytest.mark.anyio
@pytest.mark.parametrize("backend", BACKEND_NAMES)
@pytest.mark.parametrize("attack", ATTACKS, ids=[attack[0] for attack in ATTACKS])
async def test_attack_is_contained(sandboxes, world, backend, attack):
    created, audit = sandboxes
    sandbox = _usable(created, backend)
    name, template, limits, expected = attack
    code = template.format(key=world["key"], root=world["root"], listener_port=world["listener"].getsockname()[1],
                           web=world["web"], internal=world["internal"], secret=SECRET)
    hits_before = list(_Site.hits)
    with pytest.raises(expected) as caught:
        result = await sandbox.run_python(code, policy=_policy(world, **limits))
        pytest.fail(f"{name} on {backend} was not stopped: {result!r}")
    error = caught.value
    assert isinstance(error, CellmonoError)
    leaked = SECRET in str(error) or SECRET in getattr(error, "stdout", "") or SECRET in getattr(error, "stderr", "")
    assert not leaked, f"{name} on {backend} leaked the secret"
    assert world["key"].read_text() == SECRET
    assert not (world["root"] / "pwned.txt").exists() and not (world["root"] / "granted" / "pwned-direct.txt").exists()
    assert not os.path.exists("/etc/cellmono-pwned")
    with pytest.raises(BlockingIOError):
        world["listener"].accept()  # nobody connected to the loopback listener
    assert not any(hit.startswith(str(world["internal"])) for hit in _Site.hits[len(hits_before):])
    # the host keeps serving: the same sandbox answers right after the attack
    assert (await sandbox.run_python("6 * 7", policy=_policy(world))).value == 42


@pytest.mark.anyio
@pytest.mark.parametrize("backend", BACKEND_NAMES)
async def test_granted_access_works(sandboxes, world, backend):
    """Positive control: what the policy grants does work, so the denials above are the policy's."""
    created, audit = sandboxes
    sandbox = _usable(created, backend)
    root = world["root"]
    code = (f"text = tools.read_file('{root}/granted/ok.txt')\n"
            f"written = tools.write_file('{root}/out/{backend}.txt', text + '!')\n"
            f"page = tools.fetch('http://127.0.0.1:{world['web']}/hello')\n"
            "[text, written, page['status'], page['body']]")
    result = await sandbox.run_python(code, policy=_policy(world))
    assert result.value == ["fine", 5, 200, "public page"]
    assert (root / "out" / f"{backend}.txt").read_text() == "fine!"
    assert result.usage.tool_calls == 3


@pytest.mark.anyio
async def test_every_tool_call_is_audited(sandboxes, world):
    created, audit = sandboxes
    sandbox = _usable(created, "wasm")
    before = len(audit)
    with pytest.raises(SandboxDenied):
        await sandbox.run_python("tools.read_file('/etc/passwd')", policy=_policy(world))
    records = audit[before:]
    tool_records = [r for r in records if r["event"] == "sandbox.tool"]
    assert len(tool_records) == 1 and tool_records[0]["decision"] == "deny"
    assert tool_records[0]["target"] == "/etc/passwd" and tool_records[0]["principal"] == "attacker"
    assert records[-1]["event"] == "sandbox.run" and records[-1]["outcome"] == "SandboxDenied"
