"""Run a segmentation in a background ``PythonSlicer`` process so Slicer stays responsive.

Layers (the first two are Qt-free and tested in CI by really running worker.py):

- ``WorkerProtocol``: builds the worker command line and parses its stdout
  (``LIVERCT {json}`` lines: progress / warning / done / error events).
- ``SubprocessRun``: launches the worker with ``subprocess`` in a private temp
  dir; ``poll()`` returns new events; ``cancel()`` kills it; ``cleanup()``.
- ``BackgroundSegmentation``: the Slicer GUI runner (``qt.QProcess`` polled by
  a ``qt.QTimer``): writes the input node to the temp dir, launches, reports
  progress, kills on Cancel, reads back the labelmap + statistics, imports
  them through the logic, removes the temp dir, and reports errors as text.

Cancel kills the whole process tree (``kill_process_tree``): ``PythonSlicer``
is a launcher that starts the real Python as a child, so killing only the
launcher would leave inference running.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

# find_python, kill_process_tree and qprocess_pid stay importable from here (tests, scripts).
from .processes import find_python, kill_process_tree, kill_qprocess, make_temp_dir, qprocess_pid  # noqa: F401

PREFIX = "LIVERCT "
WORKER_SCRIPT = str(Path(__file__).with_name("worker.py"))


@dataclass
class WorkerEvent:
    kind: str  # progress | warning | done | error | log
    data: dict = field(default_factory=dict)


@dataclass
class WorkerProtocol:
    """Command line + incremental stdout parser for worker.py (pure Python)."""

    _buffer: str = ""
    log: list = field(default_factory=list)

    @staticmethod
    def command(input_path: str, output_dir: str, model: str = "", device: str = "auto", fast: bool = False,
                roi_lps: Optional[tuple] = None, threads: Optional[int] = None, python: Optional[str] = None,
                script: str = WORKER_SCRIPT, uncertainty: bool = False) -> list[str]:
        cmd = [python or find_python(), script, "--input", str(input_path), "--output-dir", str(output_dir),
               "--device", device or "auto"]
        if model:
            cmd += ["--model", str(model)]
        if fast:
            cmd.append("--fast")
        if roi_lps:
            lo, hi = roi_lps
            cmd += ["--roi-lps", *[repr(float(v)) for v in (*lo, *hi)]]
        if threads:
            cmd += ["--threads", str(int(threads))]
        if uncertainty:
            cmd.append("--uncertainty")
        return cmd

    @staticmethod
    def parse_line(line: str) -> WorkerEvent:
        line = line.rstrip("\r\n")
        if line.startswith(PREFIX):
            try:
                data = json.loads(line[len(PREFIX):])
                return WorkerEvent(str(data.pop("event", "log")), data)
            except (ValueError, AttributeError):
                pass
        return WorkerEvent("log", {"line": line})

    def feed(self, chunk: str | bytes) -> list[WorkerEvent]:
        """Add stdout text (possibly partial lines); return the complete events."""
        if isinstance(chunk, bytes):
            chunk = chunk.decode("utf-8", errors="replace")
        self._buffer += chunk
        *lines, self._buffer = self._buffer.split("\n")
        events = [self.parse_line(x) for x in lines if x.strip()]
        self.log.extend(e.data["line"] for e in events if e.kind == "log")
        return events

    def flush(self) -> list[WorkerEvent]:
        rest, self._buffer = self._buffer, ""
        return [self.parse_line(rest)] if rest.strip() else []

    @staticmethod
    def failure_message(exit_code: Optional[int], stderr_text: str, events: Sequence[WorkerEvent]) -> str:
        """Readable message for a run that ended without a ``done`` event."""
        for e in reversed(list(events)):
            if e.kind == "error":
                return str(e.data.get("message") or "Segmentation failed.")
        tail = "\n".join(stderr_text.strip().splitlines()[-5:])
        return (f"The segmentation process stopped unexpectedly (exit code {exit_code}). "
                "If this happens again, check that the dependencies are installed (module panel: "
                "'Install dependencies') and that enough memory is free."
                + (f"\nDetails:\n{tail}" if tail else ""))


class SubprocessRun:
    """One worker run with ``subprocess`` (Qt-free; used by tests and scripts).

    The input must already be a file; results land in ``self.output_dir``.
    """

    def __init__(self, input_path: str, model: str = "", device: str = "auto", fast: bool = False,
                 roi_lps=None, python: Optional[str] = None, temp_dir: Optional[str] = None, env=None,
                 script: str = WORKER_SCRIPT, uncertainty: bool = False) -> None:
        self.temp_dir = temp_dir or make_temp_dir()
        self.output_dir = os.path.join(self.temp_dir, "out")
        self.protocol = WorkerProtocol()
        self.events: list[WorkerEvent] = []
        self._cmd = WorkerProtocol.command(input_path, self.output_dir, model, device, fast, roi_lps, python=python,
                                           script=script, uncertainty=uncertainty)
        self._env = env
        self.proc: Optional[subprocess.Popen] = None
        self._queue: list[str] = []
        self._lock = threading.Lock()
        self._stderr: list[str] = []
        self._readers: list[threading.Thread] = []

    def start(self) -> "SubprocessRun":
        self.proc = subprocess.Popen(self._cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     encoding="utf-8", errors="replace", env=self._env)
        self._readers = [threading.Thread(target=self._pump, args=(self.proc.stdout, self._queue), daemon=True),
                         threading.Thread(target=self._pump, args=(self.proc.stderr, self._stderr), daemon=True)]
        for t in self._readers:
            t.start()
        return self

    def _pump(self, stream, sink: list) -> None:
        for line in stream:
            with self._lock:
                sink.append(line)

    def poll(self) -> list[WorkerEvent]:
        with self._lock:
            lines, self._queue[:] = list(self._queue), []
        new = self.protocol.feed("".join(lines))
        self.events.extend(new)
        return new

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait(self, timeout: Optional[float] = None) -> Optional[int]:
        assert self.proc is not None
        code = self.proc.wait(timeout)
        for t in self._readers:  # drain the pipes
            t.join(5)
        self.poll()
        self.events.extend(self.protocol.flush())
        return code

    def cancel(self) -> None:
        """Kill the worker and everything it started."""
        if self.proc is not None and self.proc.poll() is None:
            kill_process_tree(self.proc.pid)
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait(10)

    @property
    def stderr_text(self) -> str:
        with self._lock:
            return "".join(self._stderr)

    def result(self) -> Optional[WorkerEvent]:
        return next((e for e in reversed(self.events) if e.kind == "done"), None)

    def cleanup(self) -> None:
        shutil.rmtree(self.temp_dir, ignore_errors=True)


class BackgroundSegmentation:
    """Slicer GUI runner: ``qt.QProcess`` + ``qt.QTimer``; callbacks only, no dialogs.

    ``onProgress(fraction, stage)`` (fraction never decreases), ``onWarning(text)``,
    ``onFinished(segmentationNode or None, statistics dict or None, error text or None)``;
    a cancelled run finishes with ``CANCELLED_MESSAGE``. ``python``/``script`` choose
    the worker command (tests substitute stand-ins).
    """

    POLL_MS = 200
    CANCELLED_MESSAGE = "Segmentation was cancelled."

    def __init__(self, logic, inputVolumeNode, outputSegmentationNode=None, model: str = "", device: str = "auto",
                 fast: bool = False, roi=None, perLesionSegments: bool = False, tableNode=None,
                 onProgress: Optional[Callable[[float, str], None]] = None,
                 onWarning: Optional[Callable[[str], None]] = None,
                 onFinished: Optional[Callable[[Any, Any, Optional[str]], None]] = None,
                 python: Optional[str] = None, script: str = WORKER_SCRIPT, keepWorker: bool = False,
                 uncertainty: bool = False) -> None:
        from .stages import MonotonicProgress

        self.logic = logic
        self.inputVolumeNode = inputVolumeNode
        self.outputSegmentationNode = outputSegmentationNode
        self.model, self.device, self.fast, self.roi = model, device, fast, roi
        self.perLesionSegments, self.tableNode = perLesionSegments, tableNode
        self.uncertainty = bool(uncertainty)
        self.onWarning, self.onFinished = onWarning, onFinished
        self.progress = MonotonicProgress(onProgress)
        self.python, self.script = python, script
        self.protocol = WorkerProtocol()
        self.events: list[WorkerEvent] = []
        self.warnings: list[str] = []
        self.process = None
        self.timer = None
        self.temp_dir: Optional[str] = None
        self._finished = False
        self.keepWorker = keepWorker
        self._host = None  # worker_host.WorkerHost when the worker is kept between runs

    # ------------------------------------------------------------------ control
    def start(self) -> None:
        import qt

        from ..engine import io
        from . import mrml_convert
        from .modelchoice import model_for_worker

        self.temp_dir = make_temp_dir()
        try:
            volume = mrml_convert.volume_from_node(self.inputVolumeNode)
            # Uncompressed: the worker reads it back at once and the folder is removed afterwards;
            # gzip would add seconds to every Apply for a full-size CT (bench/bench_io.py).
            in_path = io.write_volume(volume, os.path.join(self.temp_dir, "input.nrrd"), compress=False)
            roi_lps = mrml_convert.roi_to_lps_box(self.roi, self.inputVolumeNode)
            model = model_for_worker(self.model)
        except Exception:
            self.cleanup()
            raise
        out_dir = os.path.join(self.temp_dir, "out")
        if self.keepWorker:
            from .worker_host import host_for

            self._host = host_for(self.python, self.script)
            job = {"input": str(in_path), "output_dir": out_dir, "model": model, "device": self.device,
                   "fast": bool(self.fast), "roi_lps": [float(v) for v in (*roi_lps[0], *roi_lps[1])] if roi_lps
                   else None, "threads": None, "uncertainty": self.uncertainty}
            self.process = self._host.submit(job)
        else:
            cmd = WorkerProtocol.command(str(in_path), out_dir, model, self.device, self.fast, roi_lps,
                                         python=self.python, script=self.script, uncertainty=self.uncertainty)
            self.process = qt.QProcess()
            self.process.setProcessChannelMode(qt.QProcess.SeparateChannels)
            self.process.start(cmd[0], cmd[1:])
        self.timer = qt.QTimer()
        self.timer.setInterval(self.POLL_MS)
        self.timer.connect("timeout()", self._poll)
        self.timer.start()
        self.progress(0.0, "starting")

    def cancel(self) -> None:
        """Kill the worker and its children (Cancel button); reports ``CANCELLED_MESSAGE`` through onFinished."""
        if self._finished:
            return
        if self._host is not None:
            self._host.stop()  # the next Apply starts a fresh worker
        elif self.process is not None:
            kill_qprocess(self.process)
        self._finish(None, None, self.CANCELLED_MESSAGE)

    @property
    def running(self) -> bool:
        return self.process is not None and not self._finished

    # ------------------------------------------------------------------ internals
    def _read(self) -> list[WorkerEvent]:
        data = bytes(self.process.readAllStandardOutput().data())
        new = self.protocol.feed(data)
        self.events.extend(new)
        for e in new:
            if e.kind == "progress":
                self.progress.engine(float(e.data.get("fraction", 0.0)), str(e.data.get("stage", "")))
            elif e.kind == "warning":
                message = str(e.data.get("message", ""))
                self.warnings.append(message)
                if self.onWarning is not None:
                    self.onWarning(message)
        return new

    def _poll(self) -> None:
        import qt

        if self._finished or self.process is None:
            return
        self._read()
        # A kept worker stays alive: its job ends with a done or error event.
        ended = next((e for e in reversed(self.events) if e.kind in ("done", "error")), None)
        running = self.process.state() != qt.QProcess.NotRunning
        if running and (self._host is None or ended is None):
            return
        if not running:
            self._read()
            self.events.extend(self.protocol.flush())
        done = next((e for e in reversed(self.events) if e.kind == "done"), None)
        if done is None:
            stderr = bytes(self.process.readAllStandardError().data()).decode("utf-8", errors="replace")
            code = self.process.exitCode() if not running else 2
            if self._host is not None and (not running or (ended and ended.data.get("code") == "bug")):
                self._host.stop()  # died, or hit a bug: start clean next time
            self._finish(None, None, WorkerProtocol.failure_message(code, stderr, self.events))
            return
        try:
            from ..engine import io
            from .stages import IMPORT_FRACTION

            labelmap = io.read_volume(done.data["labelmap"])
            uncertainty = io.read_volume(done.data["uncertainty"]) if done.data.get("uncertainty") else None
            stats = done.data.get("statistics")
            self.progress(IMPORT_FRACTION, "importing")
            seg = self.logic.importResult(self.inputVolumeNode, labelmap, done.data.get("labels") or [], stats,
                                          self.outputSegmentationNode, perLesionSegments=self.perLesionSegments,
                                          modelName=str(done.data.get("model", "")), tableNode=self.tableNode,
                                          uncertainty=uncertainty)
        except Exception as e:  # noqa: BLE001 - reported as text, the widget shows it
            self._finish(None, None, f"Could not load the segmentation result: {e}")
            return
        self.progress(1.0, "done")
        self._finish(seg, stats, None)

    def _finish(self, seg, stats, error: Optional[str]) -> None:
        self._finished = True
        if self.timer is not None:
            self.timer.stop()
        self.cleanup()
        if self.onFinished is not None:
            self.onFinished(seg, stats, error)

    def cleanup(self) -> None:
        if self.temp_dir:
            shutil.rmtree(self.temp_dir, ignore_errors=True)
            self.temp_dir = None
