"""A hardened process can no longer open files, create sockets, start programs or fork, while threads still work;
the process that started it is untouched. Each attempt runs in a child, because hardening is one-way.
(Moved from the `sandbox.harden` notebook, which shows each layer's report.)"""

from __future__ import annotations

import json
import subprocess
import sys

from cellmono.sandbox.harden import seccomp_program

PROBE = r'''
import json, os, socket, threading
from cellmono.sandbox.harden import harden
report = harden(memory_bytes=1 << 30)
def attempt(action):
    try:
        action()
        return "allowed"
    except OSError as error:
        return type(error).__name__
results = {"open": attempt(lambda: open("/etc/hostname").read()),
           "socket": attempt(lambda: socket.socket()),
           "exec": attempt(lambda: os.execv("/bin/true", ["true"])),
           "fork": attempt(lambda: os.fork() or os._exit(0))}
thread = threading.Thread(target=lambda: None); thread.start(); thread.join()
results["thread"] = "allowed"
print(json.dumps({"report": report, "results": results}))
'''


def test_a_hardened_process_cannot_open_connect_exec_or_fork() -> None:
    completed = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=30)
    outcome = json.loads(completed.stdout.strip().splitlines()[-1])
    results = outcome["results"]
    assert results["thread"] == "allowed"
    applied = {layer for layer, status in outcome["report"].items() if status.startswith("applied")}
    if "seccomp" in applied:
        assert results["socket"] != "allowed" and results["exec"] != "allowed"
        assert results["fork"] != "allowed"
    if "landlock" in applied:
        assert results["open"] != "allowed"
    assert open("/etc/hostname").read() is not None  # the test's own process is unaffected
    assert len(seccomp_program()) % 8 == 0
