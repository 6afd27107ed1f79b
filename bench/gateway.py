"""Benchmark: cellmono's MCP gateway against FastMCP 4.x with an equivalent security stack.

Both servers expose the same trivial tool (echo a text) over streamable HTTP, protocol revision
2026-07-28, behind: bearer JWT authentication (RS256, issuer and audience checked), a per-tool
scope check, a rate limit set high enough never to trip, and request logging to a file (cellmono:
its audit sink; FastMCP: its LoggingMiddleware). Each server runs alone in its own process, on
uvicorn with uvloop and httptools; the same lean load generator (raw asyncio sockets, ready-made
requests, keep-alive connections) runs in another process, checks every response, and measures
latency. Server CPU per call is the server process's own CPU time over the calls it answered.
cellmono alone is also measured reading a resource (`resource_read_per_s`) and getting a prompt
(`prompt_get_per_s`) through the same door, 16 clients; `task_roundtrip_ms` (p50 of a task's call then
`tasks/get` until completed) and `progress_overhead` (p50 latency of a tool reporting 10 progress steps over that
of the same tool reporting none, both asked with a progress token, alternating, one client).

    python bench/gateway.py [--quick]       last stdout line: one JSON object
"""



import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ISSUER = "https://issuer.bench"
TEXT = "hello"


# -- the servers (run as `--serve NAME`) --------------------------------------------------------
def serve_cellmono(port: int, folder: Path) -> None:
    sys.path.insert(0, str(ROOT))
    from pydantic import BaseModel

    from cellmono.core.app import App
    from cellmono.core.cell import Cell, prompt, resource, tool
    from cellmono.core.config import Settings
    from cellmono.core.context import Context
    from cellmono.gateway.task_store import task_support
    from cellmono.runtime.serve import build, serve_http

    class Text(BaseModel):
        text: str

    class NoteId(BaseModel):
        id: int

    class Steps(BaseModel):
        steps: int

    class BenchCell(Cell):
        name = "bench"

        @tool(requires="bench:read")
        async def echo(self, request: Text) -> Text:
            """Echo the text."""
            return Text(text=request.text)

        @tool(requires="bench:read")
        @task_support("optional")
        async def job(self, request: Text) -> Text:
            """Echo the text, as a task for a client declaring the tasks extension."""
            return Text(text=request.text)

        @tool(requires="bench:read")
        async def steps(self, request: Steps, ctx: Context) -> Text:
            """Report `steps` progress steps (when the client asked for progress), then answer."""
            for step in range(1, request.steps + 1):
                await ctx.progress(step, request.steps, f"step {step}")
            return Text(text=str(request.steps))

        @resource("bench://notes/{id}", requires="bench:read")
        async def note(self, request: NoteId) -> str:
            return f"note {request.id}"

        @prompt(requires="bench:read")
        async def greet(self, request: Text) -> str:
            return f"Hello, {request.text}!"

    settings = Settings(source=str(folder / "settings.ini"), extra_sections={
        "gateway": {"port": str(port), "jwks": str(folder / "jwks.json"), "issuer": ISSUER, "api_keys": "false",
                    "state": str(folder / "cellmono-state"), "rate": "1e9", "burst": "1e9", "tool_rate": "1e9",
                    "tool_burst": "1e9", "max_in_flight": "4096", "max_in_flight_per_ip": "4096",
                    "max_connections_per_ip": "4096"},
        "roles": {"admin": "*:*"}})
    served = build(App([BenchCell()], settings=settings))
    import uvloop
    uvloop.run(serve_http(served, on_ready=lambda url: print("ready", url, flush=True)))


def serve_fastmcp(port: int, folder: Path) -> None:
    import logging

    import uvicorn
    from fastmcp import FastMCP
    from fastmcp.server.auth.providers.jwt import JWTVerifier
    from fastmcp.server.middleware.logging import LoggingMiddleware
    from fastmcp.server.middleware.rate_limiting import RateLimitingMiddleware
    from fastmcp.utilities.authorization import require_scopes

    request_log = logging.getLogger("bench.fastmcp.requests")
    request_log.addHandler(logging.FileHandler(folder / "fastmcp-requests.log"))
    request_log.setLevel(logging.INFO)
    request_log.propagate = False
    verifier = JWTVerifier(public_key=(folder / "public.pem").read_text(), issuer=ISSUER,
                           audience=f"http://127.0.0.1:{port}/mcp", algorithm="RS256")
    mcp = FastMCP("bench", auth=verifier)
    mcp.add_middleware(RateLimitingMiddleware(max_requests_per_second=1e9, burst_capacity=10**9))
    mcp.add_middleware(LoggingMiddleware(logger=request_log))

    @mcp.tool(name="bench.echo", auth=require_scopes("bench:read"))
    def echo(text: str) -> dict:
        """Echo the text."""
        return {"text": text}

    app = mcp.http_app(path="/mcp", stateless_http=True, json_response=True)
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False,
                            loop="uvloop", http="httptools", server_header=False)
    server = uvicorn.Server(config)

    async def run() -> None:
        task = asyncio.create_task(server.serve())
        while not server.started:
            await asyncio.sleep(0.01)
        print("ready", f"http://127.0.0.1:{port}/mcp", flush=True)
        await task

    import uvloop
    uvloop.run(run())


# -- the load generator (run as `--load`) -------------------------------------------------------
# what each measured method sends (params, the Mcp-Name header) and the answer it must get
METHODS = {
    "tools/call": ({"name": "bench.echo", "arguments": {"text": TEXT}}, "bench.echo"),
    "resources/read": ({"uri": "bench://notes/1"}, "bench://notes/1"),
    "prompts/get": ({"name": "bench.greet", "arguments": {"text": TEXT}}, "bench.greet"),
}


def request_bytes(port: int, token: str, request_id: int, method: str = "tools/call") -> bytes:
    params, name = METHODS[method]
    body = json.dumps({"jsonrpc": "2.0", "id": request_id, "method": method, "params": {
        **params, "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
                            "io.modelcontextprotocol/clientCapabilities": {}}}}).encode()
    head = (f"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            f"Accept: application/json, text/event-stream\r\nMCP-Protocol-Version: 2026-07-28\r\n"
            f"Mcp-Method: {method}\r\nMcp-Name: {name}\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            key, value = line.split(":", 1)
            headers[key.strip().lower()] = value.strip()
    if "content-length" in headers:
        return status, await reader.readexactly(int(headers["content-length"]))
    chunks = []
    while True:  # chunked
        size = int((await reader.readuntil(b"\r\n")).strip(), 16)
        if size == 0:
            await reader.readuntil(b"\r\n")
            return status, b"".join(chunks)
        chunks.append(await reader.readexactly(size))
        await reader.readexactly(2)


def check(status: int, body: bytes, method: str = "tools/call") -> None:
    if status != 200:
        raise AssertionError(f"HTTP {status}: {body[:300]!r}")
    if body.startswith(b"event:") or body.startswith(b"data:"):
        body = next(line[5:] for line in body.splitlines() if line.startswith(b"data:"))
    result = json.loads(body)["result"]
    if method == "resources/read":
        ok = result["contents"][0]["text"] == "note 1"
    elif method == "prompts/get":
        ok = result["messages"][0]["content"]["text"] == f"Hello, {TEXT}!"
    else:
        ok = not result.get("isError") and result["structuredContent"]["text"] == TEXT
    if not ok:
        raise AssertionError(f"unexpected result {result}")


async def load(port: int, token: str, concurrency: int, seconds: float, method: str = "tools/call"
               ) -> dict[str, float]:
    latencies: list[float] = []
    payload = request_bytes(port, token, 1, method)
    stop_at = 0.0

    async def worker() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while True:
                started = time.perf_counter()
                if started >= stop_at:
                    return
                writer.write(payload)
                status, body = await read_response(reader)
                check(status, body, method)
                latencies.append(time.perf_counter() - started)
        finally:
            writer.close()

    stop_at = time.perf_counter() + seconds
    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - began
    latencies.sort()
    return {"calls": len(latencies), "seconds": elapsed, "calls_per_s": len(latencies) / elapsed,
            "p95_ms": latencies[int(0.95 * (len(latencies) - 1))] * 1000 if latencies else float("nan")}


# -- the orchestration ----------------------------------------------------------------------------
def keys(folder: Path) -> None:
    import jwt
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (folder / "private.pem").write_bytes(private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    (folder / "public.pem").write_bytes(private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    public = jwt.algorithms.get_default_algorithms()["RS256"].to_jwk(private.public_key(), as_dict=True)
    (folder / "jwks.json").write_text(json.dumps({"keys": [{**public, "kid": "bench", "alg": "RS256"}]}))


def token(folder: Path, port: int) -> str:
    import jwt
    from cryptography.hazmat.primitives import serialization

    private = serialization.load_pem_private_key((folder / "private.pem").read_bytes(), password=None)
    return jwt.encode({"sub": "bench-user", "iss": ISSUER, "aud": f"http://127.0.0.1:{port}/mcp",
                       "exp": time.time() + 3600, "scope": "tool:call:bench.echo resource:read:bench.note prompt:get:bench.greet bench:read "
                                "tool:call:bench.job task:read:bench.job tool:call:bench.steps",
                       "client_id": "bench"}, private, algorithm="RS256", headers={"kid": "bench"})


def free_port() -> int:
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def task_roundtrip(port: int, bearer: str, rounds: int) -> float:
    """p50 ms of one task's round trip: `tools/call` answered with a task, then `tasks/get` until it completed."""
    import httpx

    meta = {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientCapabilities": {"extensions": {"io.modelcontextprotocol/tasks": {}}}}
    url = f"http://127.0.0.1:{port}/mcp"

    def rpc(client: httpx.Client, method: str, params: dict, name: str) -> dict:
        headers = {"Authorization": f"Bearer {bearer}", "MCP-Protocol-Version": "2026-07-28", "Mcp-Method": method,
                   "Mcp-Name": name, "Accept": "application/json, text/event-stream"}
        body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": {**params, "_meta": meta}}
        answer = client.post(url, json=body, headers=headers).json()
        if "result" not in answer:
            raise RuntimeError(f"{method}: {answer}")
        return answer["result"]

    times: list[float] = []
    with httpx.Client(timeout=30) as client:
        for _ in range(rounds + 5):  # the first five warm up
            started = time.perf_counter()
            task = rpc(client, "tools/call", {"name": "bench.job", "arguments": {"text": TEXT}}, "bench.job")
            for _ in range(1000):
                got = rpc(client, "tasks/get", {"taskId": task["taskId"]}, task["taskId"])
                if got["status"] == "completed":
                    break
            else:
                raise RuntimeError(f"task {task['taskId']} did not complete")
            times.append((time.perf_counter() - started) * 1000)
    measured = sorted(times[5:])
    return measured[len(measured) // 2] if measured else None


def progress_overhead(port: int, bearer: str, rounds: int) -> float:
    """p50 of a call reporting 10 progress steps over p50 of the same call reporting none, both with a progress token.

    Both go through the whole gateway on 2026-07-28 (the answer is an SSE stream carrying the progress notifications,
    then the result); the two kinds alternate so that drift in the machine's load hits both alike."""
    import httpx

    url = f"http://127.0.0.1:{port}/mcp"
    headers = {"Authorization": f"Bearer {bearer}", "MCP-Protocol-Version": "2026-07-28", "Mcp-Method": "tools/call",
               "Mcp-Name": "bench.steps", "Accept": "application/json, text/event-stream"}
    meta = {"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}}

    def call(client: httpx.Client, steps: int, request_id: int) -> float:
        body = {"jsonrpc": "2.0", "id": request_id, "method": "tools/call",
                "params": {"name": "bench.steps", "arguments": {"steps": steps},
                           "_meta": {**meta, "progressToken": request_id}}}
        started = time.perf_counter()
        answer = client.post(url, json=body, headers=headers)
        elapsed = time.perf_counter() - started
        messages = [json.loads(line[5:]) for line in answer.text.splitlines() if line.startswith("data:")] \
            if answer.headers.get("content-type", "").startswith("text/event-stream") else [answer.json()]
        seen = sum(1 for message in messages if message.get("method") == "notifications/progress")
        if seen != steps or "result" not in messages[-1]:
            raise RuntimeError(f"steps={steps}: {seen} progress notifications, last message {messages[-1]}")
        return elapsed

    quiet: list[float] = []
    loud: list[float] = []
    with httpx.Client(timeout=30) as client:
        for round_ in range(rounds + 5):  # the first five warm up
            pair = (call(client, 0, 2 * round_ + 1), call(client, 10, 2 * round_ + 2))
            if round_ >= 5:
                quiet.append(pair[0])
                loud.append(pair[1])
    if not loud or not quiet:
        return None
    return sorted(loud)[len(loud) // 2] / sorted(quiet)[len(quiet) // 2]


def optional(figure) -> float | None:
    """A secondary figure, or None (printed as null) when its run failed on a noisy machine: never a crash."""
    try:
        return figure()
    except Exception as error:  # a slow or overloaded run: report it and carry on
        print(f"figure skipped: {type(error).__name__}: {str(error)[:200]}", file=sys.stderr)
        return None


def thread_cpu(process) -> dict[int, float]:
    """CPU seconds of each thread of `process` (an empty dict where the platform gives none)."""
    try:
        return {thread.id: thread.user_time + thread.system_time for thread in process.threads()}
    except Exception:  # a platform without per-thread times: the split is skipped, never the run
        return {}


def split(name: str, process, before: dict[int, float], calls: int) -> None:
    """Print (stderr) where the server's CPU per call went: its event-loop thread and its other threads (for
    cellmono, the audit writers); the profile of the next optimisation pass starts from it."""
    after = thread_cpu(process)
    if not after or not calls:
        return
    spent = {tid: after[tid] - before.get(tid, 0.0) for tid in after}
    main = spent.pop(process.pid, 0.0)
    others = " + ".join(f"{value * 1000 / calls:.3f}" for value in sorted(spent.values(), reverse=True) if value > 0)
    print(f"{name:9s} server CPU ms/call by thread: event loop {main * 1000 / calls:.3f}, other threads "
          f"{others or '0'}", file=sys.stderr)


def measure(name: str, folder: Path, seconds: float) -> dict[str, float | None]:
    import psutil

    port = free_port()
    server = subprocess.Popen([sys.executable, __file__, "--serve", name, "--port", str(port), "--folder", str(folder)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        if not line.startswith("ready"):
            raise RuntimeError(f"{name} server did not start: {line}{server.stderr.read() if server.stderr else ''}")
        bearer = token(folder, port)
        process = psutil.Process(server.pid)

        def run_load(concurrency: int, duration: float, method: str = "tools/call") -> dict[str, float]:
            done = subprocess.run([sys.executable, __file__, "--load", "--port", str(port), "--token", bearer,
                                   "--concurrency", str(concurrency), "--seconds", str(duration), "--method", method],
                                  capture_output=True, text=True, check=False, cwd=ROOT)
            if done.returncode != 0:
                raise RuntimeError(f"load generator failed against {name}: {done.stderr[-2000:]}")
            return json.loads(done.stdout.strip().splitlines()[-1])

        run_load(8, min(1.0, seconds / 2))  # warm-up: imports, caches, JIT-free steady state
        cpu_before, threads_before = sum(process.cpu_times()[:2]), thread_cpu(process)
        one = run_load(1, seconds)
        many = run_load(150, seconds)
        cpu = sum(process.cpu_times()[:2]) - cpu_before
        calls = one["calls"] + many["calls"]
        split(name, process, threads_before, calls)
        figures = {"calls_per_s_1": one["calls_per_s"], "calls_per_s_150": many["calls_per_s"],
                   "p95_ms_150": many["p95_ms"], "cpu_ms_per_call": cpu * 1000 / calls if calls else None}
        if name == "cellmono":  # the catalog: resources and prompts over the same door, 16 clients
            figures["resource_read_per_s"] = optional(lambda: run_load(16, seconds / 2, "resources/read")["calls_per_s"])
            figures["prompt_get_per_s"] = optional(lambda: run_load(16, seconds / 2, "prompts/get")["calls_per_s"])
            figures["task_roundtrip_ms"] = optional(lambda: task_roundtrip(port, bearer, 50 if seconds < 4 else 300))
            figures["progress_overhead"] = optional(lambda: progress_overhead(port, bearer, 50 if seconds < 4 else 300))
        return figures
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()


def rounded(value: float | None, digits: int) -> float | None:
    return None if value is None or value != value else round(value, digits)  # NaN (an empty window) is null too


def show(value: float | None, width: int, digits: int) -> str:
    return f"{value:{width}.{digits}f}" if value is not None and value == value else "-".rjust(width)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short runs, for CI")
    parser.add_argument("--seconds", type=float, default=None, help="seconds per load phase")
    parser.add_argument("--serve", choices=["cellmono", "fastmcp"])
    parser.add_argument("--load", action="store_true")
    parser.add_argument("--port", type=int)
    parser.add_argument("--folder", type=Path)
    parser.add_argument("--token")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--method", default="tools/call", choices=sorted(METHODS))
    args = parser.parse_args()
    if args.serve == "cellmono":
        serve_cellmono(args.port, args.folder)
        return
    if args.serve == "fastmcp":
        serve_fastmcp(args.port, args.folder)
        return
    if args.load:
        import uvloop
        print(json.dumps(uvloop.run(load(args.port, args.token, args.concurrency, args.seconds, args.method))))
        return
    seconds = args.seconds or (1.5 if args.quick else 8.0)
    with tempfile.TemporaryDirectory(prefix="cellmono-bench-") as temporary:
        folder = Path(temporary)
        keys(folder)
        cellmono = optional(lambda: measure("cellmono", folder, seconds)) or {}
        fastmcp = optional(lambda: measure("fastmcp", folder, seconds)) or {}
    for label, figures in (("cellmono", cellmono), ("fastmcp", fastmcp)):
        print(f"{label:9s} 1 client {show(figures.get('calls_per_s_1'), 8, 0)} calls/s   150 clients "
              f"{show(figures.get('calls_per_s_150'), 8, 0)} calls/s  p95 {show(figures.get('p95_ms_150'), 7, 1)} ms   "
              f"server CPU {show(figures.get('cpu_ms_per_call'), 5, 3)} ms/call", file=sys.stderr)

    def ratio(top: float | None, bottom: float | None) -> float | None:
        return top / bottom if top is not None and bottom else None

    result = {
        "cellmono_calls_per_s_1": rounded(cellmono.get("calls_per_s_1"), 1),
        "fastmcp_calls_per_s_1": rounded(fastmcp.get("calls_per_s_1"), 1),
        "cellmono_calls_per_s_150": rounded(cellmono.get("calls_per_s_150"), 1),
        "fastmcp_calls_per_s_150": rounded(fastmcp.get("calls_per_s_150"), 1),
        "cellmono_p95_ms_150": rounded(cellmono.get("p95_ms_150"), 2),
        "fastmcp_p95_ms_150": rounded(fastmcp.get("p95_ms_150"), 2),
        "ratio_throughput_150": rounded(ratio(cellmono.get("calls_per_s_150"), fastmcp.get("calls_per_s_150")), 2),
        "cellmono_server_cpu_ms_per_call": rounded(cellmono.get("cpu_ms_per_call"), 3),
        "fastmcp_server_cpu_ms_per_call": rounded(fastmcp.get("cpu_ms_per_call"), 3),
        "resource_read_per_s": rounded(cellmono.get("resource_read_per_s"), 1),
        "prompt_get_per_s": rounded(cellmono.get("prompt_get_per_s"), 1),
        "task_roundtrip_ms": rounded(cellmono.get("task_roundtrip_ms"), 2),
        "progress_overhead": rounded(cellmono.get("progress_overhead"), 2),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
