"""`cellmono keys rotate --retire` while the app writes: an online re-wrap moves every data key first,
retire refuses while anything is still wrapped under the old key, and nothing written is lost."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from cellmono.security.keys import FileKeyProvider, StoreError
from cellmono.security.store import EncryptedStore, open_store
from cellmono.security.guard import SecuritySection

CELLMONO = str(Path(sys.executable).with_name("cellmono"))

WRITER = textwrap.dedent("""
    import sys, time
    from cellmono.security.guard import SecuritySection
    from cellmono.security.store import open_store
    folder, seconds = sys.argv[1], float(sys.argv[2])
    store = open_store(SecuritySection(store_path=folder + "/store.sqlite", kek_file=folder + "/kek.json"))
    deadline, index = time.monotonic() + seconds, 0
    while time.monotonic() < deadline:
        namespace = f"ns{index // 20}"   # a new namespace (a new data key) every 20 writes
        store.put(namespace, f"k{index}", f"value {index}".encode())
        print(namespace, index, flush=True)  # acknowledged
        index += 1
        time.sleep(0.002)
""")


def section(folder: Path) -> SecuritySection:
    return SecuritySection(store_path=str(folder / "store.sqlite"), kek_file=str(folder / "kek.json"),
                           audit_path=str(folder / "audit.sqlite"))


def rotate(folder: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CELLMONO, "keys", "rotate", "--store", str(folder / "store.sqlite"), "--kek-file",
                           str(folder / "kek.json"), "--retire", *extra], cwd=folder, capture_output=True, text=True,
                          timeout=120)


def test_nothing_written_during_rotations_is_lost(tmp_path: Path) -> None:
    open_store(section(tmp_path), create_key_file=True).close()
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), "6"], stdout=subprocess.PIPE, text=True)
    time.sleep(1.0)
    retired = []
    for _ in range(3):
        result = rotate(tmp_path)
        assert result.returncode == 0 or "refusing to retire" in result.stderr, result.stderr  # never a lost key
        retired.append(result.stdout + result.stderr)
        time.sleep(0.7)
    output, _ = writer.communicate(timeout=60)
    assert writer.returncode == 0
    acknowledged = [line.split() for line in output.splitlines()]
    assert len(acknowledged) > 100 and any("retired key-encryption keys: " in text and "none" not in text
                                           for text in retired), retired
    keys = FileKeyProvider(tmp_path / "kek.json")
    assert len(keys.keys) <= 2  # old keys really were retired
    with EncryptedStore(tmp_path / "store.sqlite", keys) as store:
        for namespace, index in acknowledged:
            assert store.get(namespace, f"k{index}") == f"value {index}".encode(), (namespace, index)


def test_a_running_writer_follows_a_rotation_of_the_key_file(tmp_path: Path) -> None:
    store = open_store(section(tmp_path), create_key_file=True)
    store.put("a", "x", b"1")
    other = FileKeyProvider(tmp_path / "kek.json")
    new = other.rotate()
    time.sleep(0.6)
    store.put("b", "y", b"2")  # a new data key: wrapped under the new KEK, not the one read at start
    assert new in store.kek_ids()
    store.close()


def test_retire_refuses_while_a_data_key_is_still_under_the_old_key(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from cellmono.cli.keys import _retire_keks
    store = open_store(section(tmp_path), create_key_file=True)
    store.put("notes", "a", b"secret")
    old = store.keys.current_key_id()
    assert isinstance(store.keys, FileKeyProvider)
    store.keys.rotate()
    monkeypatch.setattr(EncryptedStore, "rewrap", lambda self: 0)  # a writer keeps wrapping under the old key
    with pytest.raises(StoreError, match=f"refusing to retire: .* still wrapped under {old}"):
        _retire_keks(store, store.keys, {})
    assert old in FileKeyProvider(tmp_path / "kek.json").keys
    monkeypatch.undo()
    facts: dict[str, int] = {}
    # moved first, then retired: the namespace's data key and the one sealing the generation (security.generation)
    assert _retire_keks(store, store.keys, facts) == [old] and facts["rewrapped"] == 2
    assert store.get("notes", "a") == b"secret"
    store.close()
