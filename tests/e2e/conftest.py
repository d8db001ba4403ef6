"""A real `streamlit run app.py` on a free port, driven by Debian's Chromium through Playwright."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-dev-shm-usage", "--no-first-run", "--disable-sync"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"streamlit exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"streamlit did not answer at {url} within {timeout} s")


def _stop_jobs(home: Path) -> None:
    """Workers run in their own sessions and outlive the app: end the ones this test started."""
    import signal

    from core.runs.status import read_raw_status

    for status_file in (home / "runs").glob("*/status.json"):
        status = read_raw_status(status_file.parent)
        if status and status.is_active and status.pid:
            try:
                os.killpg(os.getpgid(status.pid), signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.fixture(scope="session")
def e2e_home(tmp_path_factory) -> Path:
    from conftest import TEST_HOME

    home = tmp_path_factory.mktemp("e2e-home")
    shared_models = TEST_HOME / "models"
    shared_models.mkdir(parents=True, exist_ok=True)
    (home / "models").symlink_to(shared_models, target_is_directory=True)
    return home


def _die_with(parent_pid: int):
    """preexec_fn: the server gets SIGKILL when the process that started it dies (Linux PR_SET_PDEATHSIG), so a pytest
    killed by its timeout leaves no server behind; if that process is already gone, the child ends at once."""
    def preexec() -> None:
        import ctypes
        import signal

        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
        except (AttributeError, OSError):
            return  # not Linux: the finalizer's killpg is all there is
        if os.getppid() != parent_pid:
            os._exit(1)

    return preexec


def _end_group(proc: subprocess.Popen) -> None:
    """SIGTERM to the server's whole process group, SIGKILL after 10 s."""
    import signal

    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(wait)
            break
        except subprocess.TimeoutExpired:
            continue


@contextmanager
def serve_app(home: Path, **env_changes: str):
    """`streamlit run app.py` on a free port with WORKBENCH_HOME=home; its jobs are ended afterwards."""
    port = _free_port()
    env = {**os.environ, "WORKBENCH_HOME": str(home), "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", **env_changes}
    log = open(home / "streamlit.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.address", "127.0.0.1", "--server.port", str(port),
         "--server.headless", "true", "--browser.gatherUsageStats", "false"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,  # its own group, ended below
        preexec_fn=_die_with(os.getpid()),  # and it dies with this process even when nothing below runs (SIGKILL)
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, proc)
        yield url
    finally:
        _stop_jobs(home)
        _end_group(proc)
        log.close()


@pytest.fixture(scope="session")
def app_url(e2e_home, embedded_dir):  # embedded_dir: convert the model before the browser waits on it
    with serve_app(e2e_home) as url:
        yield url


HUB_REPO = "tiny-org/tiny-llama"


@pytest.fixture(scope="session")
def hub(tiny_llama_dir):
    """A local Hub (HF_ENDPOINT) serving the tiny random Llama as tiny-org/tiny-llama, a little throttled."""
    sys.path.insert(0, str(ROOT / "tests"))
    from hub_server import HubServer, repo_from_folder

    with HubServer([repo_from_folder(HUB_REPO, tiny_llama_dir)], bytes_per_s=4_000_000) as server:
        yield server


@pytest.fixture(scope="session")
def hub_app_url(tmp_path_factory, hub, embedded_dir):
    """The app as a user with a Hub connection starts it: HF_ENDPOINT set, online, its own Hub cache."""
    home = tmp_path_factory.mktemp("e2e-hub-home")
    (home / "models").symlink_to(e2e_models(), target_is_directory=True)
    with serve_app(home, HF_HUB_OFFLINE="0", HF_ENDPOINT=hub.url, HF_HUB_CACHE=str(home / "hub-cache")) as url:
        yield url


def e2e_models() -> Path:
    from conftest import TEST_HOME

    shared = TEST_HOME / "models"
    shared.mkdir(parents=True, exist_ok=True)
    return shared


@pytest.fixture(scope="session")
def browser():
    from playwright.sync_api import expect

    expect.set_options(timeout=60_000)
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing: `make test` installs Debian's chromium")
        pytest.skip(f"{CHROMIUM} not installed (run `make test`, which installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        instance = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield instance
        instance.close()


@pytest.fixture
def page(browser, app_url):
    context = browser.new_context(viewport={"width": 1500, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(60_000)
    yield page
    context.close()
