"""One Ray worker of a batch: holds the model warm on its device and runs cases, one at a time,
with the same per-case function as the single-machine batch (``run._run_case``: lock, resume
check, segment, atomic outputs, ``.result.json``, ``.done.json`` last).

The class is plain Python; ``ray_run`` turns it into an actor (``ray.remote(...)(CaseWorker)``),
so importing this module does not need Ray. Every call returns a small tuple the driver reads:
("result", CaseResult) | ("locked", holder, host) | ("unusable", message) | ("cancelled",).
"""
from __future__ import annotations

import dataclasses
import os
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Optional

from ..engine.errors import BundleError, Cancelled
from .cases import Case
from .locking import CaseLocked
from .options import BatchOptions
from .resume import model_identity
from .run import _run_case


class CaseWorker:
    """A warm model on one device.

    ``_hook`` is for tests, (case, stage, action, flag folder, times): when the worker reaches
    ``stage`` of ``case``, "kill" kills it with SIGKILL (the first ``times`` times), "hold" waits
    there until the case is cancelled (creating ``<flag folder>/<case>.held`` first)."""

    def __init__(self, bundle_path: str, model: dict, options: BatchOptions,
                 _hook: Optional[tuple] = None) -> None:
        self.options = options
        self.model = model
        self.cancel_event = threading.Event()
        self.state: tuple = ("", 0.0, "starting")
        self._hook = _hook
        self.error = ""  # why this worker cannot run cases; never raised here, so the driver can say it
        try:
            from ..engine.bundle import ModelBundle
            from ..engine.warmup import start_warm_up

            self.bundle = ModelBundle.load(Path(bundle_path))
            mine = model_identity(self.bundle)
            if mine != model:
                raise BundleError(
                    f"the model at {bundle_path} on {socket.gethostname()} is not the one the batch started with "
                    f"({mine['name']} {mine['version']} vs {model['name']} {model['version']}, or different "
                    "files). Put the model on storage every node sees, or install the same one everywhere.")
            start_warm_up(self.bundle, options.device)
        except Exception as err:  # noqa: BLE001 - reported by the first run() call
            self.error = f"{type(err).__name__}: {err}" if not isinstance(err, BundleError) else str(err)

    def identity(self) -> dict:
        """Where this worker runs: its lock files carry this host and pid."""
        return {"host": socket.gethostname(), "pid": os.getpid()}

    def status(self) -> tuple:
        """(case, fraction of it done, stage) for the driver's progress bar."""
        return self.state

    def cancel(self) -> None:
        """Stop the running case cleanly (its partial outputs are removed); the worker is not reused."""
        self.cancel_event.set()

    def run(self, case: Case, outdir: str, resume: bool, overwrite: bool, lock_wait: Optional[float],
            batch_started: float) -> tuple:
        if self.error:
            return ("unusable", self.error)
        self.state = (case.name, 0.0, "start")

        def progress(fraction: float, stage: str) -> None:
            self.state = (case.name, fraction, stage)
            if self._hook is not None:
                self._test_hook(case.name, stage)

        try:
            r = _run_case(case, Path(outdir), self.options, self.bundle, self.model, progress, self.cancel_event,
                          resume, overwrite, lock_wait=lock_wait, batch_started=batch_started)
        except CaseLocked as locked:
            return ("locked", locked.holder, socket.gethostname())
        except BundleError as err:  # _run_case lets only an unusable model through: no case can run
            return ("unusable", str(err))
        except (Cancelled, KeyboardInterrupt):
            return ("cancelled",)
        finally:
            self.state = ("", 0.0, "idle")
        return ("result", r)

    def _test_hook(self, case: str, stage: str) -> None:
        name, at, action, flags, times = self._hook
        if case != name or stage != at:
            return
        if action == "hold":
            Path(flags, f"{case}.held").touch()
            deadline = time.monotonic() + 60
            while not self.cancel_event.is_set() and time.monotonic() < deadline:
                time.sleep(0.02)
            return
        for n in range(int(times)):
            try:
                os.close(os.open(Path(flags) / f"{case}.{n}", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                continue
            os.kill(os.getpid(), signal.SIGKILL)


def worker_options(options: BatchOptions, device: str, threads: int) -> BatchOptions:
    """The batch options as one worker runs them: its device and its share of the threads
    (neither is part of the resume key, so results match the single-machine batch's)."""
    return dataclasses.replace(options, device=device, threads=threads)
