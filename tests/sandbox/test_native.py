"""gVisor boxes for real, where runsc is installed and the app is root: the host's files are absent, and grants
under /tmp are mounted over the box's tmpfs, read-only and writable as granted, with a pids limit that leaves
runsc room for its own threads. (Moved from the `sandbox.native` notebook, which checks the bundle it writes.)"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from cellmono.sandbox.guest import refuse_tools
from cellmono.sandbox.native import GvisorBackend
from cellmono.sandbox.policy import Policy, RunRequest

pytestmark = pytest.mark.anyio


async def test_gvisor_hides_host_files_and_mounts_grants_as_granted() -> None:
    gvisor = GvisorBackend()
    try:
        if gvisor.unavailable_reason():
            pytest.skip(f"gvisor unavailable: {gvisor.unavailable_reason()}")
        probe = RunRequest(code="import os\nos.path.exists('/etc/passwd')")
        assert (await gvisor.run(probe, refuse_tools)).value is False
        with tempfile.TemporaryDirectory(prefix="cellmono-gvisor-grant-") as shared:
            os.chmod(shared, 0o755)
            os.mkdir(f"{shared}/in")
            os.mkdir(f"{shared}/out")
            os.chmod(f"{shared}/out", 0o777)
            Path(f"{shared}/in/a.txt").write_text("granted")
            os.chmod(f"{shared}/in/a.txt", 0o644)
            grants = Policy.from_capabilities([f"fs:read:{shared}/in/*", f"fs:write:{shared}/out/**"], processes=16)
            code = (f"text = open('{shared}/in/a.txt').read()\nopen('{shared}/out/b.txt', 'w').write(text + '!')\n"
                    f"try:\n    open('{shared}/in/c.txt', 'w')\n    denied = False\nexcept OSError:\n    denied = True\n"
                    "[text, denied]")
            assert (await gvisor.run(RunRequest(code=code, policy=grants), refuse_tools)).value == ["granted", True]
            assert Path(f"{shared}/out/b.txt").read_text() == "granted!" and not os.path.exists(f"{shared}/in/c.txt")
    finally:
        await gvisor.close()
