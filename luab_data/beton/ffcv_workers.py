"""FFCV's .beton writer, driven with worker processes that cannot hang or outlive the build.

FFCV's own `DatasetWriter.from_indexed_dataset` forks its workers from the calling process and
then polls a counter until every sample is written. That goes wrong in three ways:
- a worker that dies (a crash, the OOM killer, an error in FFCV's code) leaves it polling for ever;
- Ctrl-C or SIGTERM leaves non-daemon workers that the interpreter's exit handler joins for ever
  (they block flushing their queues to a parent that no longer reads);
- a fork copies every object and thread state of the parent: a DALI pipeline or a numba
  dispatcher that the child's garbage collector finalises then deadlocks on threads that exist
  only in the parent.

So this module runs the same FFCV pieces (file header, metadata table, page allocator, the
per-worker job, the final allocation table) under its own supervision:
- workers are forked from a forkserver (a clean single-threaded process holding only the
  preloaded modules), as daemons that ignore SIGINT and exit as soon as the build process is
  gone, even when it was SIGKILLed (a watcher thread on a pidfd of the build);
- the main loop watches each worker's exit code and raises `WriterProcessDied` on a failure;
- whatever ends the loop (an error, Ctrl-C, a SIGTERM turned into SystemExit by the CLI), every
  worker is killed and reaped and the shared memory released before the exception goes on.
"""

from __future__ import annotations

import atexit
import ctypes
import functools
import multiprocessing as mp
import os
import queue
import select
import signal
import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

# Imported into the forkserver once, so that forking a worker costs no imports.
_PRELOAD = ["luab_data.beton.samples", "luab_data.raster", "ffcv.writer", "ffcv.fields"]
_POLL_S = 0.1
_REAP_S = 5.0
_STOP_AT_EXIT = False  # _stop_forkserver registered with atexit


class WriterProcessDied(RuntimeError):
    """An FFCV writer process exited with a failure before the file was complete."""


def context() -> mp.context.BaseContext:
    """The multiprocessing context of the writer processes (forkserver, preloaded)."""
    global _STOP_AT_EXIT
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(_PRELOAD)
    if not _STOP_AT_EXIT:
        atexit.register(_stop_forkserver)
        _STOP_AT_EXIT = True
    return ctx


def prestart() -> None:
    """Start the forkserver now, so that its imports (FFCV pulls in torch: seconds) overlap
    whatever the caller does before writing."""
    from multiprocessing import forkserver

    context()
    forkserver.ensure_running()


def _stop_forkserver() -> None:
    """At exit: close the forkserver's liveness pipe and reap it, so that it does not outlive
    this process (it was seen as an orphan for seconds after a test session); killed if it
    has not gone within _REAP_S. CPython keeps this state private (3.8-3.13): if it changes,
    the forkserver ends by itself as before."""
    from multiprocessing import forkserver

    server = getattr(forkserver, "_forkserver", None)
    pid = getattr(server, "_forkserver_pid", None)
    fd = getattr(server, "_forkserver_alive_fd", None)
    if pid is None or fd is None:
        return
    os.close(fd)
    server._forkserver_alive_fd = None
    deadline = time.monotonic() + _REAP_S
    try:
        while os.waitpid(pid, os.WNOHANG)[0] == 0:
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                break
            time.sleep(0.02)
    except ChildProcessError:  # already reaped
        pass
    server._forkserver_pid = None


def write_indexed(
    path: str,
    fields: dict[str, Any],
    dataset: Any,
    indices: Sequence[int],
    *,
    workers: int,
    chunk_size: int = 100,
    page_size: int = 8 << 20,
    progress: Any = None,
) -> float:
    """Write `dataset[i]` for i in `indices` (in that order) into the .beton `path`; returns
    the `time.monotonic()` at which the last writer process began writing (what came before is
    start-up: the forkserver's imports, FFCV's set-up; the rest is the writing itself).

    `dataset` and `fields` are pickled to the workers: FFCV encodes each sample with the same
    field objects that the dataset sees (one pickle keeps them one object). `progress` is an
    optional tqdm-like bar advanced with the number of samples written.
    """
    from ffcv.memory_allocator import MemoryAllocator
    from ffcv.writer import DatasetWriter, worker_job_indexed_dataset

    ctx = context()
    writer = DatasetWriter(path, fields, page_size=page_size, num_workers=workers)
    writer.num_samples = len(indices)
    writer.prepare()  # header + field table on disk, metadata table in shared memory
    allocator = MemoryAllocator(path, writer.data_region_start, page_size)
    # FFCV's allocator makes its page counters in the default (fork) context: a forkserver
    # child cannot receive those locks.
    allocator.next_page_allocated = ctx.Value(ctypes.c_uint64, 0)
    allocator.next_page_written = ctx.Value(ctypes.c_uint64, 0)
    work, results, done = ctx.Queue(), ctx.Queue(), ctx.Value(ctypes.c_uint64, 0)
    began = ctx.RawArray(ctypes.c_double, workers)  # each writer's time.monotonic() at its start
    # (position in the file, sample) pairs as arrays: the queue holds them all until sent
    order = np.stack([np.arange(len(indices)), np.asarray(indices, np.int64)], axis=1)
    for start in range(0, len(order), chunk_size):
        work.put(order[start : start + chunk_size])
    for _ in range(workers):
        work.put(None)
    job = (
        work,
        writer.metadata_sm,
        writer.metadata_type,
        fields,
        allocator,
        done,
        results,
        dataset,
    )
    build = os.getpid()
    procs = [
        ctx.Process(
            target=_worker,
            args=(build, worker_job_indexed_dataset, job, began, w),
            daemon=True,
            name=f"ffcv-writer-{w}",
        )
        for w in range(workers)
    ]
    finished = False
    try:
        for p in procs:
            p.start()
        tables = _supervise(procs, results, done, len(order), progress)
        _finalize(writer, tables)
        finished = True
    finally:
        _stop(procs, [work, results], clean=finished)
        writer.metadata_sm.close()
        writer.metadata_sm.unlink()
    return max(began)


def _worker(build: int, job_fn: Any, job: tuple, began: Any, w: int) -> None:
    """A writer process: exits with the build, leaves Ctrl-C to it, then runs FFCV's job
    (noting when it began in `began[w]`; CLOCK_MONOTONIC is one clock for all processes)."""
    threading.Thread(target=_exit_with, args=(build,), daemon=True, name="build-watch").start()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    began[w] = time.monotonic()
    allocator = job[4]  # FFCV's job: (queue, metadata, its dtype, fields, allocator, ...)
    allocator.allocations = AllocationTable()  # sent back whole at the end: keep it compact
    job_fn(*job)


def _exit_with(pid: int) -> None:
    """Exit this process once process `pid` has ended. Its parent, the forkserver, is no
    signal: it lives until its last child has ended (each child holds its liveness pipe)."""
    try:
        fd = os.pidfd_open(pid)
    except (AttributeError, OSError):  # no pidfd (old kernel, not Linux): poll
        while _exists(pid):
            time.sleep(1.0)
    else:
        select.select([fd], [], [])  # readable once the process has exited
    os._exit(1)


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _supervise(procs: list, results: Any, done: Any, total: int, progress: Any) -> list:
    """Wait for every worker's allocation table while watching that none has failed."""
    tables: list = []
    reported = 0
    while reported < len(procs):
        try:
            tables.append(results.get(timeout=_POLL_S))
            reported += 1
        except queue.Empty:
            pass
        if progress is not None:
            progress.update(int(done.value) - progress.n)
        for p in procs:
            if p.exitcode not in (None, 0):
                raise WriterProcessDied(
                    f"FFCV writer process {p.pid} ({p.name}) died with "
                    f"{_describe_exit(p.exitcode)}; see its error above"
                )
        if reported < len(procs) and all(p.exitcode == 0 for p in procs) and results.empty():
            time.sleep(_POLL_S)  # exited cleanly: its result may still be in the pipe
            if results.empty():
                raise WriterProcessDied("an FFCV writer process exited without its results")
    if int(done.value) != total:
        raise WriterProcessDied(f"the writer processes wrote {int(done.value)} of {total} samples")
    return tables


class AllocationTable:
    """A writer's allocations (sample, pointer, size) as a growing array of FFCV's allocation
    table rows: 24 bytes each (up to twice that while the array doubles) instead of a Python
    tuple of three ints (~150 bytes), and one array when pickled to the build process (at
    1.28 M samples of 5 arrays: ~150 MB instead of ~1 GB in the writers and again in the build
    process). It offers what FFCV's MemoryAllocator does with its list of allocations:
    append, pop, [-1], len."""

    def __init__(self, capacity: int = 1 << 12) -> None:
        from ffcv.types import ALLOC_TABLE_TYPE

        self.rows = np.zeros(capacity, ALLOC_TABLE_TYPE)
        self.n = 0

    def append(self, allocation: tuple[int, int, int]) -> None:
        if self.n == len(self.rows):
            self.rows = np.concatenate([self.rows, np.zeros_like(self.rows)])
        self.rows[self.n] = allocation
        self.n += 1

    def pop(self) -> tuple[int, int, int]:
        if not self.n:
            raise IndexError("pop from an empty allocation table")
        self.n -= 1
        return self.rows[self.n].item()

    def __getitem__(self, i: int) -> tuple[int, int, int]:
        if not -self.n <= i < self.n:
            raise IndexError(i)
        return self.rows[i % self.n].item()

    def __len__(self) -> int:
        return self.n

    def __reduce__(self) -> tuple:
        return np.asarray, (self.rows[: self.n],)  # unpickled: the array, not copied again


def _finalize(writer: Any, tables: list[np.ndarray]) -> None:
    """What FFCV's `DatasetWriter.finalize` does, from the writers' arrays: the metadata table
    into its place, the allocation table at the end, the header last (pointing at it)."""
    with open(writer.fname, "r+b") as fp:
        fp.seek(writer.metadata_start)
        fp.write(writer.metadata_sm.buf)
        writer.header["alloc_table_ptr"] = fp.seek(0, os.SEEK_END)
        for table in tables:  # one after the other, as FFCV joins them: no joined copy
            fp.write(np.ascontiguousarray(table).view(np.uint8))
        fp.seek(0)
        fp.write(writer.header.tobytes())


def _describe_exit(code: int) -> str:
    if code < 0:
        return f"signal {signal.Signals(-code).name}"
    return f"exit status {code}"


def _stop(procs: list, queues: list, clean: bool) -> None:
    """Reap the workers, killing them first unless the write finished; close the queues so
    that data a dead reader left in them cannot hold the interpreter's exit."""
    started = [p for p in procs if p.pid is not None]
    for p in started:
        if not clean:
            p.kill()
    for p in started:
        p.join(_REAP_S)
        if p.exitcode is None:  # a clean worker that did not exit: stuck, kill it too
            p.kill()
            p.join(_REAP_S)
    for q in queues:
        q.cancel_join_thread()
        q.close()


def plain_ffcv_write(path: str, fields: dict[str, Any], dataset: Any, workers: int) -> None:
    """FFCV's own `DatasetWriter`, called as its users do (the benchmarks' peer baseline and
    their synthetic data), its progress bar silenced. Its workers are forked from this
    process: garbage is collected first, so that nothing with threads of its own (a DALI
    pipeline) is finalised inside them."""
    import gc

    import ffcv.writer

    gc.collect()
    bar, ffcv.writer.tqdm = ffcv.writer.tqdm, functools.partial(ffcv.writer.tqdm, disable=True)
    try:
        ffcv.writer.DatasetWriter(path, fields, num_workers=workers).from_indexed_dataset(dataset)
    finally:
        ffcv.writer.tqdm = bar
