"""A background worker kept alive between Applies (Slicer GUI side, ``qt.QProcess``).

Starting the worker costs Python + torch + model loading (about 1 s on a 2-core
laptop-class CPU, 3-5 s on the GPU hosts measured in ``bench/RESULTS.md``) and,
on a GPU, the CUDA start-up of a first case. A kept worker (``worker.py
--serve``) pays that once per Slicer session; each Apply then drops a
``job.json`` into the worker's private control folder (a file, not stdin, so
any launcher in between works). The worker leaves on its own after
``IDLE_SECONDS`` without a job; ``stop()`` (Cancel, a crash, module cleanup)
kills its whole process tree and removes the folder, and the next Apply starts
a fresh one.
"""
from __future__ import annotations

import json
import os
import shutil
from typing import Optional

from .processes import find_python, kill_qprocess, make_temp_dir, qprocess_pid

IDLE_SECONDS = 900.0
STALE_FRACTION = 0.8  # a worker idle (or at least unused) this long is replaced rather than reused


class WorkerHost:
    def __init__(self, python: Optional[str], script: str, idle_seconds: float = IDLE_SECONDS) -> None:
        self.python, self.script, self.idle_seconds = python, script, idle_seconds
        self.process = None
        self.control_dir: Optional[str] = None
        self._jobs = 0
        self._last_submit = 0.0

    @property
    def alive(self) -> bool:
        if self.process is None:
            return False
        import qt

        return self.process.state() != qt.QProcess.NotRunning

    def submit(self, job: dict):
        """Start the worker if needed, hand it ``job``; returns the QProcess whose stdout carries the events."""
        import time

        import qt

        if self.alive and time.monotonic() - self._last_submit > STALE_FRACTION * self.idle_seconds:
            self.stop()  # it may be leaving for idleness right now: a job dropped then would be lost
        self._last_submit = time.monotonic()
        if not self.alive:
            self.stop()
            self.control_dir = make_temp_dir()
            self.process = qt.QProcess()
            self.process.setProcessChannelMode(qt.QProcess.SeparateChannels)
            self.process.start(self.python or find_python(),
                               [self.script, "--serve", self.control_dir, "--idle-seconds", repr(self.idle_seconds)])
        else:
            self.process.readAllStandardError()  # drop what earlier jobs wrote; a crash shows its own
        self._jobs += 1
        tmp = os.path.join(self.control_dir, f".job-{self._jobs}.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(job, f)
        os.replace(tmp, os.path.join(self.control_dir, "job.json"))  # the worker never sees half a job
        return self.process

    def pid(self) -> Optional[int]:
        return qprocess_pid(self.process) if self.process is not None else None

    def stop(self) -> None:
        """Kill the worker (and its children) and remove its control folder. Never raises."""
        if self.process is not None:
            if self.alive:
                kill_qprocess(self.process)
            self.process = None
        if self.control_dir:
            shutil.rmtree(self.control_dir, ignore_errors=True)
            self.control_dir = None


_HOSTS: dict = {}


def host_for(python: Optional[str], script: str) -> WorkerHost:
    """The session's kept worker for this interpreter and script."""
    key = (python or "", script)
    if key not in _HOSTS:
        _HOSTS[key] = WorkerHost(python, script)
    return _HOSTS[key]


def stop_all() -> None:
    """Stop every kept worker (module cleanup, Slicer exit)."""
    for host in _HOSTS.values():
        host.stop()
