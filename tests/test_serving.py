"""Binding to a non-loopback address needs an explicit opt-in: the app has no authentication."""
from __future__ import annotations

import subprocess
import sys

import pytest
from streamlit.testing.v1 import AppTest

from conftest import ROOT
from core.serving import OPT_IN_ENV, check_address, is_loopback


@pytest.mark.parametrize("host, loopback", [("127.0.0.1", True), ("localhost", True), ("::1", True), ("[::1]", True),
                                            ("127.0.0.2", True), ("0.0.0.0", False), ("::", False), ("192.168.1.7", False),
                                            ("myhost.example", False)])
def test_loopback_addresses(host, loopback):
    assert is_loopback(host) is loopback


def test_a_public_address_is_refused_without_the_opt_in_and_warned_with_it():
    allowed, message = check_address("0.0.0.0", 8501, env={})
    assert not allowed and "no authentication" in message and f"{OPT_IN_ENV}=1" in message
    allowed, message = check_address("0.0.0.0", 8501, env={OPT_IN_ENV: "1"})
    assert allowed and "no authentication" in message
    assert check_address("127.0.0.1", 8501, env={}) == (True, "")


def test_make_run_checks_the_host_before_streamlit_starts():
    def check(host, **env):
        return subprocess.run([sys.executable, "-m", "tools.host_check", host, "8501"], cwd=ROOT, capture_output=True, text=True,
                              env={"PATH": "/usr/bin:/bin", **env})

    refused = check("0.0.0.0")
    assert refused.returncode == 2 and "REFUSED" in refused.stderr and "reverse proxy" in refused.stderr
    opted_in = check("0.0.0.0", **{OPT_IN_ENV: "1"})
    assert opted_in.returncode == 0 and "WARNING" in opted_in.stderr
    assert check("127.0.0.1").returncode == 0
    makefile = (ROOT / "Makefile").read_text()
    run_recipe = makefile[makefile.index("\nrun:"):].split("\n\n")[0]
    assert run_recipe.index("tools.host_check $(HOST)") < run_recipe.index("streamlit run")


def test_the_app_serves_nothing_when_started_by_hand_on_a_public_address(monkeypatch):
    from streamlit import config

    monkeypatch.delenv(OPT_IN_ENV, raising=False)
    previous = config.get_option("server.address")
    config.set_option("server.address", "0.0.0.0")
    try:
        at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
        at.run()
    finally:
        config.set_option("server.address", previous)
    assert any("no authentication" in e.value for e in at.error)
    assert not at.sidebar.selectbox and not at.title  # no page, no sidebar
