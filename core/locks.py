"""The one cross-process file lock of the workbench (fcntl.flock on a lock file that stays), for work that two jobs
may start at once: the embedded model's first conversion (core.models), a Hub blob's download (core.hub)."""
from __future__ import annotations

import fcntl
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator


@contextmanager
def file_lock(path: str | Path, *, on_wait: Callable[[], None] | None = None, give_up: Callable[[], bool] | None = None,
              poll_s: float = 0.1) -> Iterator[bool]:
    """Hold an exclusive advisory lock on `path` for the with-block, across processes. When another holder has it:
    on_wait() is called once, then this waits, polling give_up() (when given) so that a stop request is not stuck
    behind the other holder. Yields True once held; False only when give_up() said so while waiting (the block must
    then leave the guarded thing alone)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait:
                on_wait()
            while True:
                if give_up is None:
                    fcntl.flock(handle, fcntl.LOCK_EX)
                    break
                if give_up():
                    yield False
                    return
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    time.sleep(poll_s)
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
