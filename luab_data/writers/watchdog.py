"""Turn a dead FFCV writer process into an error instead of a hang.

FFCV's DatasetWriter polls a shared counter until every sample is written; a worker process
that dies (an exception in FFCV's own code, a crash, the OOM killer) leaves it polling for
ever. A thread watches this process's children and interrupts the main thread when one exits
with a failure status.
"""

from __future__ import annotations

import _thread
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import psutil


class WriterProcessDied(RuntimeError):
    pass


def _failed(pid: int) -> bool:
    """Whether child `pid` has exited with a failure, without reaping it (WNOWAIT)."""
    try:
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return False
    if info is None:
        return False
    return info.si_code != os.CLD_EXITED or info.si_status != 0


@contextmanager
def child_watchdog(period_s: float = 0.5) -> Iterator[None]:
    """Raise WriterProcessDied in the block if a child process started inside it fails."""
    me = psutil.Process()
    before = {p.pid for p in me.children()}
    stop, died = threading.Event(), []

    def watch() -> None:
        while not stop.wait(period_s):
            for child in me.children():
                if child.pid not in before and _failed(child.pid):
                    died.append(child.pid)
                    _thread.interrupt_main()
                    return

    thread = threading.Thread(target=watch, daemon=True, name="ffcv-writer-watchdog")
    thread.start()
    try:
        yield
    except KeyboardInterrupt:
        if not died:
            raise
        for child in me.children():  # the survivors would wait for work that never comes
            if child.pid not in before:
                child.kill()
        message = f"FFCV writer process {died[0]} died; see its error above"
        raise WriterProcessDied(message) from None
    finally:
        stop.set()
        thread.join()
