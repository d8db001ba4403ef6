"""`python -m tools.host_check HOST PORT`: run by `make run` before Streamlit starts (see core.serving).

A loopback HOST passes. Any other prints that the app has no authentication and passes only with the explicit
opt-in WORKBENCH_ALLOW_REMOTE=1 (still printing the warning). Exit status 0 = serve, 2 = refused.
"""
from __future__ import annotations

import sys

from core.serving import check_address


def main(argv: list[str] | None = None) -> int:
    host, port = (list(argv if argv is not None else sys.argv[1:]) + ["127.0.0.1", "8501"])[:2]
    allowed, message = check_address(host, port)
    if message:
        print(f"{'WARNING' if allowed else 'REFUSED'}: {message}", file=sys.stderr)
    return 0 if allowed else 2


if __name__ == "__main__":
    sys.exit(main())
