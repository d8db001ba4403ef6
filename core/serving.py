"""Where the app listens. It has no authentication, so anything but the loopback address is an explicit opt-in.

`make run` checks the address before it starts Streamlit (`python -m tools.host_check`), and `app.py` checks
the address Streamlit was actually started with, so `streamlit run app.py --server.address 0.0.0.0` by hand is
refused too. To serve other machines, keep the app on 127.0.0.1 behind an authenticating reverse proxy (see
the README); `WORKBENCH_ALLOW_REMOTE=1` is the opt-in for binding a non-loopback address directly.
"""
from __future__ import annotations

import ipaddress
import os

OPT_IN_ENV = "WORKBENCH_ALLOW_REMOTE"


def is_loopback(host: str) -> bool:
    """True for localhost, 127.0.0.0/8 and ::1 (and an empty address, which Streamlit's config maps to its default)."""
    host = (host or "").strip().strip("[]")
    if host in ("", "localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name other than localhost can resolve to anything


def remote_allowed(env: dict | None = None) -> bool:
    value = (env if env is not None else os.environ).get(OPT_IN_ENV, "")
    return value.strip().lower() in ("1", "yes", "true", "on")


def exposure_warning(host: str, port: int | str) -> str:
    return (f"The workbench has no authentication. Bound to {host}:{port}, anyone who can reach this machine can "
            "read your datasets and runs, start jobs on its CPU / GPU, and load models (with remote code if it is "
            "trusted). Prefer 127.0.0.1 behind an authenticating reverse proxy (README: 'Serving other machines').")


def check_address(host: str, port: int | str, env: dict | None = None) -> tuple[bool, str]:
    """(may serve, message). Loopback: always. Anything else: only with WORKBENCH_ALLOW_REMOTE=1."""
    if is_loopback(host):
        return True, ""
    if remote_allowed(env):
        return True, exposure_warning(host, port) + f" Serving anyway: {OPT_IN_ENV}=1 is set."
    return False, exposure_warning(host, port) + f" To bind {host} anyway, opt in explicitly: {OPT_IN_ENV}=1 make run HOST={host}"
