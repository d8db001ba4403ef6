"""The end-to-end Streamlit server must not outlive the pytest that started it, even one killed by its timeout
(SIGKILL: no finalizer runs)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]
CHILD = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    sys.path[:0] = [sys.argv[2], sys.argv[3]]
    from conftest import serve_app  # tests/e2e/conftest.py

    with serve_app(Path(sys.argv[1])):
        children = [int(p) for p in os.listdir("/proc") if p.isdigit()
                    and open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()[1] == str(os.getpid())]
        print("SERVER", *children, flush=True)
        time.sleep(600)
""")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie nobody reaps has ended too
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG and /proc are Linux's")
def test_the_server_dies_with_the_process_that_started_it(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path), str(ROOT / "tests" / "e2e"), str(ROOT / "tests")],
                             cwd=ROOT, stdout=subprocess.PIPE, text=True, start_new_session=True)
    servers: list[int] = []
    try:
        line = child.stdout.readline()  # after the server answered its health check
        assert line.startswith("SERVER "), f"the child did not start a server: {line!r}"
        servers = [int(pid) for pid in line.split()[1:]]
        assert servers and all(_alive(pid) for pid in servers)
        child.send_signal(signal.SIGKILL)  # what pytest-timeout's / CI's kill does: no finalizer runs
        child.wait(10)
        deadline = time.time() + 5
        while any(_alive(pid) for pid in servers) and time.time() < deadline:
            time.sleep(0.1)
        assert not any(_alive(pid) for pid in servers), "the Streamlit server outlived the process that started it"
    finally:
        for pid in [child.pid, *servers]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
