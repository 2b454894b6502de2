"""Faults during a .beton build: a dying or failing writer process, Ctrl-C, SIGTERM, SIGKILL.

Every case must end the build promptly with no process of it left and nothing that looks
complete. Writer processes are forked from a forkserver; the planted faults live in
`fault_plants.py` (see there why).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from beton_fixtures import OPTIONS, sample_dir, source_path
from fault_plants import DyingSamples, FailingBlocks, ModulesSeen, plant

from luab_data.beton.ffcv_workers import WriterProcessDied
from luab_data.beton.paths import manifest_path
from luab_data.sources import open_source
from luab_data.writers import beton as beton_writer
from luab_data.writers.beton import build_beton

PLANTS = Path(__file__).with_name("fault_plants.py")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("faults")


@pytest.fixture
def planted(monkeypatch):
    """Plant a PackSamples subclass for one test (undone afterwards)."""
    monkeypatch.setattr(beton_writer, "PackSamples", beton_writer.PackSamples)
    return plant


def _build(root: Path, out: Path, kind: str = "imagenet-ab") -> object:
    source = open_source(source_path(root, kind), images=sample_dir(root, kind))
    return build_beton(source, out, options=OPTIONS, workers=2, show_progress=False)


def _leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.endswith((".tmp", ".spill", ".json"))]


def _writer_processes() -> list[psutil.Process]:
    """This process's FFCV writer processes: the children of its forkserver."""
    me = psutil.Process()
    servers = [c for c in me.children() if "forkserver" in " ".join(_cmdline(c))]
    return [w for s in servers for w in _alive(s.children())]


def _cmdline(proc: psutil.Process) -> list[str]:
    try:
        return proc.cmdline()
    except psutil.Error:
        return []


def _alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    out = []
    for p in procs:
        try:
            if p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.Error:
            pass
    return out


@pytest.mark.timeout(180)
def test_a_dead_writer_process_raises_instead_of_hanging(root, tmp_path, planted):
    """FFCV's writer polls for ever on a dead worker; the build must fail instead."""
    planted(DyingSamples)
    with pytest.raises(WriterProcessDied, match="exit status 3"):
        _build(root, tmp_path / "d.beton")
    assert not _leftovers(tmp_path) and not (tmp_path / "d.beton").exists()
    assert not _writer_processes()


@pytest.mark.timeout(180)
def test_an_error_in_a_writer_process_is_raised_here(root, tmp_path, planted):
    planted(FailingBlocks)
    with pytest.raises(ZeroDivisionError, match="planted"):
        _build(root, tmp_path / "e.beton", kind="coco-ab")
    assert not _leftovers(tmp_path) and not _writer_processes()


@pytest.mark.timeout(180)
def test_writer_processes_inherit_nothing_of_this_process(root, tmp_path, planted):
    """A fork would copy this process's DALI pipelines into the workers, where finalising one
    deadlocks; the forkserver's workers start without them."""
    from nvidia.dali import Pipeline

    garbage = [Pipeline(batch_size=1, num_threads=1, device_id=None)]
    garbage.append(garbage)  # a cycle: only the garbage collector would finalise it
    del garbage

    planted(ModulesSeen)
    summary = _build(root, tmp_path / "m.beton")
    assert summary.rejects.get("bad-image", 0) == 0 and summary.records > 0
    assert manifest_path(tmp_path / "m.beton").exists()


def _start_build(root: Path, out: Path) -> subprocess.Popen:
    src, images = source_path(root, "imagenet-ab"), sample_dir(root, "imagenet-ab")
    args = [
        sys.executable,
        str(PLANTS),
        "SlowSamples",
        "build",
        "--src",
        str(src),
        "--images",
        str(images),
        "--out",
        str(out),
        "--map-size",
        "8",
        "--workers",
        "2",
        "--quiet",
    ]
    return subprocess.Popen(
        args, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _tree_once_packing(proc: subprocess.Popen, timeout: float = 150.0) -> list[psutil.Process]:
    """Every process of the build, once a writer process runs (the sample is one chunk)."""
    build, deadline = psutil.Process(proc.pid), time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stdout.read()
        tree = _alive(build.children(recursive=True))
        servers = [p for p in _alive(build.children()) if "forkserver" in " ".join(_cmdline(p))]
        if servers and _alive(servers[0].children()):
            return [build, *tree]
        time.sleep(0.2)
    raise AssertionError("the build never started a writer process")


@pytest.mark.timeout(300)
@pytest.mark.parametrize("how", ["ctrl-c", "sigterm", "sigkill"])
def test_a_signalled_build_ends_promptly_and_leaves_no_process(root, tmp_path, how):
    out = tmp_path / "sig.beton"
    proc = _start_build(root, out)
    try:
        tree = _tree_once_packing(proc)
        sent = time.monotonic()
        if how == "ctrl-c":  # a terminal sends SIGINT to the whole foreground group
            os.killpg(proc.pid, signal.SIGINT)
        else:
            proc.send_signal(signal.SIGTERM if how == "sigterm" else signal.SIGKILL)
        code = proc.wait(timeout=30)
        _, alive = psutil.wait_procs(tree, timeout=30)
        elapsed = time.monotonic() - sent
    finally:
        with_group = [p for p in psutil.process_iter() if _in_group(p, proc.pid)]
        for p in with_group:
            p.kill()
        proc.stdout.close()
    assert not alive, f"{how}: still running after {elapsed:.1f} s: {alive}"
    assert code == {"ctrl-c": 1, "sigterm": 128 + signal.SIGTERM, "sigkill": -signal.SIGKILL}[how]
    assert not out.exists() and not manifest_path(out).exists()
    if how != "sigkill":  # a killed process cannot clean up; its temp files look unfinished
        assert not _leftovers(tmp_path)
    print(f"{how}: build and its {len(tree) - 1} processes gone {elapsed:.1f} s after the signal")


def _in_group(proc: psutil.Process, pgid: int) -> bool:
    try:
        return os.getpgid(proc.pid) == pgid
    except (ProcessLookupError, psutil.Error):
        return False


@pytest.mark.timeout(300)
@pytest.mark.parametrize("how", ["ctrl-c", "sigterm", "end"])
def test_sample_generation_leaves_no_worker_process(tmp_path, how):
    """`luab-data sample` forks a pool of workers: they are gone when it ends, however it ends
    (a pool worker once survived the pool's terminate() and the command hung joining it)."""
    cmd = [str(Path(sys.executable).with_name("luab-data")), "sample", "--out", str(tmp_path)]
    cmd += ["--size", "20000", "--no-images", "--jobs", "2", "--quiet"]
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL)
    try:
        deadline, workers = time.monotonic() + 150, []
        # The pool forks its workers one after the other: wait for both, not the first.
        while len(workers) < 2 and time.monotonic() < deadline and proc.poll() is None:
            workers = _alive(psutil.Process(proc.pid).children())
            time.sleep(0.1)
        assert len(workers) == 2, "the sample never started its two workers"
        if how == "ctrl-c":
            os.killpg(proc.pid, signal.SIGINT)
        elif how == "sigterm":
            proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=240)
        _, alive = psutil.wait_procs(workers, timeout=30)
    finally:
        for p in [p for p in psutil.process_iter() if _in_group(p, proc.pid)]:
            p.kill()
    assert not alive, f"{how}: workers still running: {alive}"
    assert code == {"ctrl-c": 1, "sigterm": 128 + signal.SIGTERM, "end": 0}[how]
    assert (how == "end") == (tmp_path / "sample.json").exists()


@pytest.mark.timeout(120)
def test_the_forkserver_ends_with_the_process_that_started_it():
    """Not even for a moment an orphan: the writer processes' forkserver is reaped at exit,
    here a stopped one (SIGSTOP: it cannot notice its parent's exit; reaping must kill it)."""
    code = (
        "import os, signal\n"
        "from multiprocessing import forkserver\n"
        "from luab_data.beton.ffcv_workers import prestart\n"
        "prestart()\n"
        "pid = forkserver._forkserver._forkserver_pid\n"
        "os.kill(pid, signal.SIGSTOP)\n"
        "print(pid, flush=True)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    pid = int(out.stdout.split()[-1])
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
