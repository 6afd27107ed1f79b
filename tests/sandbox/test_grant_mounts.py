"""Native boxes (bubblewrap, gVisor) never widen a grant, checked against the mounts each box really gets
(`/proc/self/mountinfo` read inside the box) and from the guest's side: a file grant gives exactly that file
(no parent folder, no sibling), a wildcard is never widened to a folder, a folder without `/**` and a symlink
give nothing, and `/tmp` is private to one run and size-limited.

With `CI=true` a missing backend fails the test; elsewhere it is skipped with its reason."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from cellmono.sandbox.guest import refuse_tools
from cellmono.sandbox.native import BubblewrapBackend, GvisorBackend, NativeBackend
from cellmono.sandbox.policy import Policy, RunRequest

pytestmark = pytest.mark.anyio

MOUNTS = """
import os
mounts = []
for line in open('/proc/self/mountinfo'):
    fields = line.split()
    dash = fields.index('-')
    point = fields[4].replace('\\\\040', ' ')
    if point == TOP or point.startswith(TOP + '/') or point == '/tmp':
        mounts.append([point, fields[dash + 1], 'ro' if 'ro' in fields[5].split(',') else 'rw'])
"""


@pytest.fixture(params=["bubblewrap", "gvisor"])
async def backend(request: pytest.FixtureRequest) -> Iterator[NativeBackend]:
    box: NativeBackend = BubblewrapBackend() if request.param == "bubblewrap" else GvisorBackend()
    reason = box.unavailable_reason()
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{request.param} is missing in CI (.ci/system-packages): {reason}")
        pytest.skip(f"{request.param}: {reason}")
    yield box
    await box.close()


@pytest.fixture
def top() -> Iterator[str]:
    """A host folder with granted and ungranted files, readable by the box's user (nobody when root)."""
    folder = tempfile.mkdtemp(prefix="cellmono-grants-")
    os.chmod(folder, 0o755)
    for name in ("a.txt", "b.txt", "c.md", "secret.key", "sub/d.txt", "sub/deep/e.txt", "out/w.txt"):
        path = Path(folder, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(path.parent, 0o777 if path.parent.name == "out" else 0o755)
        path.write_text(name)
        os.chmod(path, 0o666)
    os.symlink("/etc", f"{folder}/link")
    os.symlink(f"{folder}/secret.key", f"{folder}/alias.txt")
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


async def box_view(backend: NativeBackend, top: str, policy: Policy, extra: str = "") -> dict:
    """What the box sees: its mounts under `top` and at /tmp, and every file it can list under `top`."""
    code = f"TOP = {top!r}\n" + MOUNTS + f"""
def walk(folder):  # stat each entry: gVisor's d_type of a file mount point is not reliable
    found = []
    for name in os.listdir(folder):
        path = os.path.join(folder, name)
        found += walk(path) if os.path.isdir(path) and not os.path.islink(path) else [path[len(TOP):]]
    return found
result = {{'mounts': sorted(mounts), 'files': sorted(walk(TOP)) if os.path.isdir(TOP) else []}}
{extra}
result
"""
    return (await backend.run(RunRequest(code=code, policy=policy), refuse_tools)).value


def points(view: dict, top: str) -> dict[str, tuple[str, str]]:
    return {point[len(top):] or "/": (fstype, mode) for point, fstype, mode in view["mounts"] if point != "/tmp"}


def sealed(backend: NativeBackend) -> tuple[str, str]:
    """How a sealed folder shows: a read-only tmpfs (bubblewrap), or a root-owned 0555 one (gVisor, guest nobody)."""
    return ("tmpfs", "rw" if backend.name == "gvisor" else "ro")


async def test_a_file_grant_binds_that_file_only(backend: NativeBackend, top: str) -> None:
    view = await box_view(backend, top, Policy(readable=(f"{top}/a.txt",)))
    mounts = points(view, top)
    assert set(mounts) == {"/", "/a.txt"}, mounts  # the folder is an empty sealed tmpfs, not the host folder
    assert mounts["/"] == sealed(backend) and mounts["/a.txt"][1] == "ro"
    assert view["files"] == ["/a.txt"]  # no sibling: b.txt, secret.key, sub/ are not there


async def test_a_wildcard_binds_the_matching_files_not_the_folder(backend: NativeBackend, top: str) -> None:
    view = await box_view(backend, top, Policy(readable=(f"{top}/*.txt",)))
    assert set(points(view, top)) == {"/", "/a.txt", "/b.txt"}
    assert view["files"] == ["/a.txt", "/b.txt"]
    view = await box_view(backend, top, Policy(readable=(f"{top}/*",)))
    assert set(points(view, top)) == {"/", "/a.txt", "/b.txt", "/c.md", "/secret.key"}
    assert "/sub/d.txt" not in view["files"]  # `*` stays within one segment: never the subfolder
    assert "/alias.txt" not in view["files"]  # a symlink would bind its target: never bound


async def test_a_subtree_grant_binds_that_folder(backend: NativeBackend, top: str) -> None:
    view = await box_view(backend, top, Policy(readable=(f"{top}/sub/**",)))
    assert set(points(view, top)) == {"/sub"}
    assert view["files"] == ["/sub/d.txt", "/sub/deep/e.txt"]


@pytest.mark.parametrize("grant", ["{top}/sub", "{top}/link", "{top}/link/**", "{top}/link/passwd", "{top}/nothing/*"])
async def test_grants_that_give_nothing(backend: NativeBackend, top: str, grant: str) -> None:
    view = await box_view(backend, top, Policy(readable=(grant.format(top=top),)))
    assert points(view, top) == {} and view["files"] == []


async def test_a_writable_file_grant_writes_that_file_and_creates_no_sibling(backend: NativeBackend, top: str) -> None:
    extra = f"""
open({top!r} + '/out/w.txt', 'w').write('changed')
try:
    open({top!r} + '/out/new.txt', 'w').write('x')
    result['sibling'] = 'created'
except OSError as error:
    result['sibling'] = error.errno
"""
    view = await box_view(backend, top, Policy(writable=(f"{top}/out/w.txt",)), extra)
    mounts = points(view, top)
    assert set(mounts) == {"/out", "/out/w.txt"} and mounts["/out/w.txt"][1] == "rw"
    assert mounts["/out"] == sealed(backend)
    assert Path(top, "out/w.txt").read_text() == "changed"
    assert view["sibling"] in (errno.EROFS, errno.EACCES, errno.EPERM) and not Path(top, "out/new.txt").exists()


async def test_a_read_grant_is_read_only(backend: NativeBackend, top: str) -> None:
    extra = f"""
try:
    open({top!r} + '/a.txt', 'w').write('x')
    result['write'] = 'written'
except OSError as error:
    result['write'] = error.errno
"""
    view = await box_view(backend, top, Policy(readable=(f"{top}/a.txt",)), extra)
    assert view["write"] in (errno.EROFS, errno.EACCES, errno.EPERM)
    assert Path(top, "a.txt").read_text() == "a.txt"


async def test_tmp_is_private_and_size_limited(backend: NativeBackend, top: str) -> None:
    Path(top, "host-marker").write_text("host")
    marker = tempfile.NamedTemporaryFile(dir="/tmp", prefix="cellmono-host-tmp-", delete=False)
    os.chmod(marker.name, 0o644)
    try:
        extra = f"""
result['host_tmp'] = os.path.exists({marker.name!r})
result['left_over'] = os.path.exists('/tmp/left-over')
open('/tmp/left-over', 'w').write('x')
written = 0
try:
    for index in range(8):
        with open(f'/tmp/fill-{{index}}', 'wb') as file:
            for _ in range(8):
                file.write(b'x' * 100_000)
                file.flush()
                written += 100_000
    result['full'] = None
except OSError as error:
    result['full'] = error.errno
result['written'] = written
stat = os.statvfs('/tmp')
result['tmp_size'] = stat.f_blocks * stat.f_frsize
"""
        policy = Policy(tmp_bytes=2 * 1024 * 1024)
        first = await box_view(backend, top, policy, extra)
        second = await box_view(backend, top, policy, extra)
    finally:
        os.unlink(marker.name)
    assert [mount[1] for mount in first["mounts"] if mount[0] == "/tmp"] == ["tmpfs"]
    assert first["host_tmp"] is False  # the host's /tmp is not the box's
    assert (first["left_over"], second["left_over"]) == (False, False)  # nothing survives a run
    assert first["full"] == errno.ENOSPC and first["written"] <= 2 * 1024 * 1024
    assert first["tmp_size"] <= 2 * 1024 * 1024
