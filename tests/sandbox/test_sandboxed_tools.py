"""`@tool(sandbox=...)` end to end: the sandbox a tool gets is scoped to the caller's verified token."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

from cellmono.core.app import App
from cellmono.core.cell import Cell, tool
from cellmono.core.config import load_settings
from cellmono.core.errors import AccessDenied
from cellmono.topology.services import Runtime
from cellmono.security.guard import Principal

pytestmark = pytest.mark.anyio


class Code(BaseModel):
    source: str


class Output(BaseModel):
    value: str | None = None
    error: str | None = None


class Runner(Cell):
    @tool(requires="code:run", sandbox="wasm")
    async def run(self, request: Code) -> Output:
        """Run Python with the caller's rights."""
        try:
            result = await self.sandbox.run_python(request.source)
        except AccessDenied as error:
            return Output(error=type(error).__name__)
        return Output(value=str(result.value))


async def test_each_caller_gets_exactly_its_own_file_grants(tmp_path) -> None:
    reports, secrets = tmp_path / "reports", tmp_path / "secrets"
    reports.mkdir()
    secrets.mkdir()
    (reports / "q1.txt").write_text("revenue up")
    (secrets / "key.txt").write_text("hunter2")
    (tmp_path / "settings.ini").write_text(
        "[security]\n"
        f"role.analyst = code:run, fs:read:{reports}/**\n"
        f"role.admin = code:run, fs:read:{tmp_path}/**\n"
        "role.nobody = notes:read\n")
    settings = load_settings(tmp_path / "settings.ini", environ={})
    runtime = Runtime.from_settings(settings)
    async with App([Runner()], settings=settings, services=runtime) as app:
        async def call(who: str, role: str, path) -> Output:
            token = runtime.token_for(Principal(id=who, roles=(role,)))
            return await app.bus.request("runner.run", Code(source=f"tools.read_file({str(path)!r})"),
                                         principal=who, capability=token, response=Output, timeout=60)

        assert (await call("ana", "analyst", reports / "q1.txt")).value == "revenue up"
        assert (await call("ana", "analyst", secrets / "key.txt")).error == "SandboxDenied"
        assert (await call("root", "admin", secrets / "key.txt")).value == "hunter2"
        with pytest.raises(AccessDenied):  # lacks code:run: refused before the tool runs
            await call("eve", "nobody", reports / "q1.txt")
