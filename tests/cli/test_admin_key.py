"""The first-run admin key of `cellmono serve` never lands in a log: with stdout a pipe or a file, it
is written to a 0600 file in the state folder and the output names the file instead."""

from __future__ import annotations

from pathlib import Path

import httpx

from gateway_support import modern_request, serve


def test_the_admin_key_goes_to_a_private_file_when_stdout_is_not_a_terminal(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with serve(state, timeout=120) as running:
        key_file = state / "admin-key"
        key = key_file.read_text().strip()
        assert key.startswith("cmk_") and running.key == key
        assert oct(key_file.stat().st_mode & 0o777) == "0o600"
        headers, body = modern_request("tools/list", None, key=key)
        assert httpx.post(running.url, headers=headers, content=body, timeout=10).status_code == 200
        output = "".join(running.output)
        assert key not in output and key.split("_")[2] not in output, output
        assert f"created a local admin API key in {key_file} (mode 0600" in output
        assert f"Bearer $(cat {key_file})" in output
