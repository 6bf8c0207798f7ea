"""Processes the Slicer face starts: which Python runs the worker, a private temp folder per run,
and killing a worker with everything it started (Cancel, a kept worker's stop).

Used by ``runner.py`` (one run) and ``worker_host.py`` (the kept worker); Qt-free except that
``qprocess_pid``/``kill_qprocess`` take a ``qt.QProcess`` they are given.
"""
from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Optional


def find_python() -> str:
    """Slicer's own Python launcher (``PythonSlicer``), else the current interpreter."""
    exe = shutil.which("PythonSlicer")
    if exe:
        return exe
    # Inside Slicer, PythonSlicer sits next to the Slicer executable.
    here = Path(sys.executable).parent
    for name in ("PythonSlicer", "PythonSlicer.exe"):
        if (here / name).exists():
            return str(here / name)
    return sys.executable


def _descendants_without_psutil(pid: int) -> list[int]:
    """Child PIDs (recursive) from ``ps`` on POSIX; [] when ``ps`` is unavailable."""
    try:
        out = subprocess.run(["ps", "-A", "-o", "pid=,ppid="], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    children: dict[int, list[int]] = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0].isdigit() and parts[1].isdigit():
            children.setdefault(int(parts[1]), []).append(int(parts[0]))
    found, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            if c not in found:
                found.append(c)
                todo.append(c)
    return found


def kill_process_tree(pid: Optional[int], timeout: float = 5.0) -> None:
    """Kill ``pid`` and all its descendants, then wait briefly for the descendants.

    Uses psutil when installed; otherwise ``taskkill /T`` on Windows or ``ps`` +
    SIGKILL on POSIX. ``pid`` itself is not waited for (reaped): its owner
    (``subprocess.Popen``/``QProcess``) must collect its exit status. Never
    raises: cancelling must always get through.
    """
    if not pid or pid <= 0:
        return
    try:
        import psutil
    except ImportError:
        psutil = None
    if psutil is not None:
        try:
            parent = psutil.Process(pid)
            # Freeze the parent first so it cannot start new children while we list them.
            try:
                parent.suspend()
            except psutil.Error:
                pass
            children = parent.children(recursive=True)
        except psutil.NoSuchProcess:
            return
        except psutil.Error as e:  # e.g. AccessDenied: use the fallback below
            logging.warning("Could not list the segmentation process's children: %s", e)
            children = None
        if children is not None:
            for p in children + [parent]:
                try:
                    p.kill()
                except psutil.NoSuchProcess:
                    pass
                except psutil.Error as e:
                    logging.warning("Could not stop process %s: %s", p.pid, e)
            _wait_gone(psutil, children, timeout)
            return
    if sys.platform == "win32":
        subprocess.run(["taskkill", "/F", "/T", "/PID", str(pid)], capture_output=True, timeout=30)
        return
    for p in reversed([pid] + _descendants_without_psutil(pid)):  # deepest children first
        try:
            os.kill(p, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def _wait_gone(psutil, procs: list, timeout: float) -> None:
    """Poll until ``procs`` are gone; orphans that init has not reaped yet (zombies) count as gone."""
    import time

    deadline = time.monotonic() + timeout
    while procs and time.monotonic() < deadline:
        alive = []
        for p in procs:
            try:
                if p.status() != psutil.STATUS_ZOMBIE:
                    alive.append(p)
            except psutil.NoSuchProcess:
                pass
        procs = alive
        if procs:
            time.sleep(0.02)


def qprocess_pid(process) -> Optional[int]:
    try:
        return int(process.processId())
    except (AttributeError, TypeError, ValueError):  # very old Qt: no processId()
        return None


def kill_qprocess(process) -> None:
    """Kill a ``qt.QProcess`` and everything it started; waits up to 5 s for it to end."""
    kill_process_tree(qprocess_pid(process))
    process.kill()  # no-op if already gone; covers a pid we could not read
    process.waitForFinished(5000)


def make_temp_dir() -> str:
    """A private temp folder (mode 0700) for one run's input/output files."""
    return tempfile.mkdtemp(prefix="LiverCTSeg-")
