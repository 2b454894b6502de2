"""Suite-wide guards against hangs.

Garbage is collected after every test, in the test process: a DALI pipeline (or any object
owning threads) left for later would otherwise be finalised wherever the next collection runs,
possibly inside a forked child where its threads do not exist and its shutdown waits for ever.
"""

from __future__ import annotations

import gc

import pytest


@pytest.fixture(autouse=True)
def _collect_garbage_here():
    yield
    gc.collect()
