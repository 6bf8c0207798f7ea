"""``run_batch_ray``: the folder batch with its cases spread over a pool of Ray workers.

The driver (this process) does what needs one view of the whole batch: discovery, the
inputs-never-outputs check (``path_safety``), the schedule, ``report.csv`` (rebuilt at most every
``REPORT_EVERY_S`` and at the end) and the progress bar. Each worker (``ray_worker.CaseWorker``,
one per GPU or N on the CPUs) holds the model warm and runs a case with the single-machine
batch's own per-case function, reading the CT from, and writing atomically into, storage every
node sees. So every promise of
docs/guarantees.md holds unchanged: per-case locks, resume by fingerprints, ``.done.json``
last, one failing case never stops the others. What Ray adds:

- a worker that dies (killed, out of memory, node lost) has its case retried once on another
  worker (a fresh one replaces it); a second death reports the case "failed";
- the dead worker's case lock names its host and pid; the driver removes exactly that lock, so
  the retry may run on any node;
- Ctrl-C or the cancel event asks the busy workers to stop (their partial outputs removed, as in
  the single-machine batch), waits up to ``CANCEL_GRACE_S`` and then ends the pool.
"""
from __future__ import annotations

import json
import os
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Union

from ..engine.errors import BundleError, Cancelled, OutputError
from ..engine.progress import Progress
from .atomic_files import remove_temp_files, unlink_quietly
from .cases import Case
from .locking import LOCK_NAME, folder_mutex
from .options import BatchOptions
from .ray_cluster import PoolPlan, RayUnavailable, connect, import_ray, plan_pool
from .ray_worker import CaseWorker, worker_options
from .report import write_report
from .results import CaseResult
from .run import BatchProgress, _now, _record_quietly, _remove_outputs, locked_result, prepare_batch

CANCEL_GRACE_S = 15.0  # how long busy workers get to clean up after a cancel before the pool ends
POLL_S = 0.25
REPORT_EVERY_S = 2.0
STATUS_EVERY_S = 0.5
WORKER_DIED = ("the Ray worker running it ended unexpectedly twice (killed, out of memory, or its node left "
               "the cluster); not retried again. If the CT is large, give each worker more memory: fewer "
               "--ray-actors per node, then rerun to redo this case")


@dataclass
class _Task:
    index: int
    case: Case
    deaths: int = 0  # workers that died running it
    lock_wait: Optional[float] = None  # None: first pass (a locked case is deferred); else the wait


@dataclass
class _Worker:
    handle: Any
    identity: Any  # ObjectRef of CaseWorker.identity()
    who: Optional[dict] = None  # its host and pid, once it has answered
    state: tuple = ("", 0.0, "")
    status_ref: Any = None
    polled: float = 0.0


@dataclass
class _Pool:
    """Workers are "starting" until they answer identity(): only then do they get cases, so a worker
    Ray cannot place (a fixed cluster asked for more than it has) never holds a case back."""

    ray: Any
    cls: Any
    args: tuple
    idle: list = field(default_factory=list)
    starting: list = field(default_factory=list)

    def add(self) -> None:
        h = self.cls.remote(*self.args)
        self.starting.append(_Worker(h, h.identity.remote()))

    def admit(self) -> str:
        """Started workers become idle; one that died starting is dropped. Returns the last such error."""
        if not self.starting:
            return ""
        refs = [w.identity for w in self.starting]
        ready, _ = self.ray.wait(refs, num_returns=len(refs), timeout=0)
        error = ""
        for w in [w for w in self.starting if w.identity in ready]:
            self.starting.remove(w)
            try:
                w.who = self.ray.get(w.identity)
                self.idle.append(w)
            except Exception as err:  # noqa: BLE001 - e.g. the package is missing on that node
                error = f"{type(err).__name__}: {str(err).strip().splitlines()[-1] if str(err).strip() else ''}"
                self.kill(w)
        return error

    def kill(self, w: _Worker) -> None:
        try:
            self.ray.kill(w.handle, no_restart=True)
        except Exception:  # noqa: BLE001 - already gone
            pass


def run_batch_ray(
    inputs: Union[str, os.PathLike, Iterable[Union[str, os.PathLike]]],
    outdir: Union[str, os.PathLike],
    options: Optional[BatchOptions] = None,
    bundle: Any = None,
    progress: Union[None, BatchProgress, Progress] = None,
    resume: bool = True,
    overwrite: bool = False,
    cancel_event: Optional[threading.Event] = None,
    on_case_done: Optional[Callable[[CaseResult], None]] = None,
    address: Optional[str] = None,
    actors: Optional[int] = None,
    _hook: Optional[tuple] = None,
) -> list[CaseResult]:
    """``run_batch`` (same arguments, results, report and errors) on a Ray cluster.

    ``address``: None or "local" starts Ray on this machine; "auto" or "ray://HOST:10001" joins a
    cluster (an initialised Ray is used as it is). ``actors``: the number of workers (default: one
    per GPU, else the CPUs divided by ``options.threads``, 4 by default). Inputs, ``outdir`` and
    the model folder must be paths every worker's node sees. ``_hook``: test hook (CaseWorker).
    Raises RayUnavailable when Ray is missing or the cluster cannot be reached."""
    ray = import_ray()  # before any work: say what to install
    prep = prepare_batch(inputs, outdir, options, bundle, progress, cancel_event)
    options, outdir, cases, bundle, model = prep.options, prep.outdir, prep.cases, prep.bundle, prep.model
    callback, cancel_event = prep.callback, prep.cancel_event
    if not getattr(bundle, "path", None):
        raise BundleError("Ray workers load the model from its folder, and this model has none. Save it as a "
                          "bundle folder on shared storage and pass that folder.")

    started_ray = connect(address)
    try:
        plan = plan_pool(ray.cluster_resources(), options.device, actors, options.threads)
        plan.actors = min(plan.actors, len(cases))  # an idle worker would only hold memory
        if callback is not None:
            callback(0.0, f"starting {plan.describe()}")
        run = _Schedule(ray, plan, str(Path(bundle.path).absolute()), model, options, cases, outdir, callback,
                        resume, overwrite, cancel_event, on_case_done, _hook)
        return run.run()
    finally:
        if started_ray:
            ray.shutdown()


def drop_lock_of(outdir: Path, case_dir: Path, who: dict) -> bool:
    """Remove the case's lock if the dead worker ``who`` (host, pid) holds it; True if the case is
    free. Only the driver knows that worker is gone: on another host no run could tell."""
    lock = case_dir / LOCK_NAME
    with folder_mutex(outdir):
        try:
            holder = json.loads(lock.read_text(encoding="utf-8") or "{}")
        except FileNotFoundError:
            return True
        except (OSError, ValueError):
            return False
        if holder.get("pid") == who.get("pid") and holder.get("host") == who.get("host"):
            unlink_quietly(lock)
            return True
    return False


class _Schedule:
    """The driver's loop: hand each idle worker the next case, collect results, replace the dead."""

    def __init__(self, ray: Any, plan: PoolPlan, bundle_path: str, model: dict, options: BatchOptions,
                 cases: list[Case], outdir: Path, callback: Optional[BatchProgress], resume: bool,
                 overwrite: bool, cancel_event: Optional[threading.Event],
                 on_case_done: Optional[Callable[[CaseResult], None]], hook: Optional[tuple]):
        self.ray, self.options, self.cases, self.outdir = ray, options, cases, outdir
        self.callback, self.resume, self.overwrite = callback, resume, overwrite
        self.cancel_event, self.on_case_done = cancel_event, on_case_done
        self.base = dict(model_name=model["name"], model_version=model["version"])
        # max_concurrency 3: status() and cancel() are answered while run() works; the driver never
        # gives one worker two cases. max_restarts 0: the driver replaces a dead worker itself.
        cls = ray.remote(num_cpus=plan.num_cpus, num_gpus=plan.num_gpus, max_concurrency=3,
                         max_restarts=0)(CaseWorker)
        self.pool = _Pool(ray, cls, (bundle_path, model, worker_options(options, plan.device, plan.threads), hook))
        self.n_workers = plan.actors
        self.results: dict[str, CaseResult] = {}
        self.inflight: dict[Any, tuple[_Worker, _Task]] = {}
        self.pending: deque[_Task] = deque(_Task(i, c) for i, c in enumerate(cases))
        self.deferred: list[_Task] = []
        self.fatal: Optional[OutputError] = None
        self.started = time.time()
        self._shown = 0.0
        self._reported, self._report_due = -REPORT_EVERY_S, False

    # ------------------------------------------------------------------ the loop
    def run(self) -> list[CaseResult]:
        for _ in range(self.n_workers):
            self.pool.add()
        try:
            while True:
                if self.cancel_event is not None and self.cancel_event.is_set():
                    raise Cancelled("Batch cancelled by the user; completed cases are kept.")
                self._admit_workers()
                self._submit()
                if not self.inflight and not self.pending:
                    if not self.deferred:
                        break
                    # Second pass, as in run_batch: wait (lock_wait) for cases other runs were holding.
                    self.pending.extend(_Task(t.index, t.case, t.deaths, self.options.lock_wait)
                                        for t in self.deferred)
                    self.deferred = []
                    continue
                refs = list(self.inflight) + [w.identity for w in self.pool.starting]
                ready, _ = self.ray.wait(refs, num_returns=1, timeout=POLL_S)
                if ready:
                    ready, _ = self.ray.wait(refs, num_returns=len(refs), timeout=0)
                for ref in ready:
                    if ref in self.inflight:  # a starting worker's answer is taken by _admit_workers
                        self._collect(ref)
                self._show_progress()
        except BaseException:
            self._stop_busy_workers()
            raise
        finally:
            for w in self.pool.idle + self.pool.starting + [w for w, _ in self.inflight.values()]:
                self.pool.kill(w)
        if self._report_due or not self.results:
            self._report(force=True)
        if self.callback is not None:
            self.callback(1.0, "done")
        return [self.results[c.name] for c in self.cases if c.name in self.results]

    def _admit_workers(self) -> None:
        error = self.pool.admit()
        if error and not (self.pool.idle or self.pool.starting or self.inflight):
            raise RayUnavailable(
                f"the Ray workers could not start ({error}). Install the same liverct-segmentation[cluster] "
                "on every node (or in the cluster's image), and check the nodes with 'ray status'.")

    def _submit(self) -> None:
        while self.pending and (self.fatal is not None or self.pool.idle):
            task = self.pending.popleft()
            if self.fatal is not None:
                self._finish(CaseResult(task.case.name, task.case.input, "not-run", f"not run: {self.fatal}",
                                        "output", **self.base, finished_at=_now()))
                continue
            w = self.pool.idle.pop(0)
            w.state, w.status_ref = (task.case.name, 0.0, "queued"), None
            ref = w.handle.run.remote(task.case, str(self.outdir), self.resume, self.overwrite, task.lock_wait,
                                      self.started)
            self.inflight[ref] = (w, task)

    def _collect(self, ref: Any) -> None:
        w, task = self.inflight.pop(ref)
        try:
            out = self.ray.get(ref)
        except self.ray.exceptions.RayActorError:
            self._worker_died(w, task)
            return
        except self.ray.exceptions.RayError as err:  # the call itself failed (e.g. a value Ray cannot send)
            self.pool.idle.append(w)
            r = CaseResult(task.case.name, task.case.input, "failed",
                           f"unexpected error in the Ray worker ({type(err).__name__}); rerun with --debug",
                           "internal", traceback=str(err), **self.base, finished_at=_now())
            _record_quietly(self.outdir / task.case.name, r)
            self._finish(r)
            return
        self.pool.idle.append(w)
        kind = out[0]
        if kind == "result":
            r = out[1]
            if r.status == "failed" and r.error_kind == "output" and getattr(r, "_enospc", False):
                self.fatal = OutputError(r.error)
            self._finish(r)
        elif kind == "locked":
            if task.lock_wait is None:
                self.deferred.append(task)
            else:
                self._finish(self._locked_result(task.case, out[1], out[2]))
        elif kind == "unusable":
            raise BundleError(out[1])
        else:  # "cancelled": only after a cancel request, which ends the loop first
            raise Cancelled("Batch cancelled by the user; completed cases are kept.")

    def _finish(self, r: CaseResult) -> None:
        self.results[r.case] = r
        self._report(r)
        if self.on_case_done is not None:
            self.on_case_done(r)

    def _report(self, r: Optional[CaseResult] = None, force: bool = False) -> None:
        """Rebuild report.csv at most every REPORT_EVERY_S (it lists every case folder: per result on
        10,000 cases it would cost more than the cases), and at the end."""
        now = time.monotonic()
        if not force and now - self._reported < REPORT_EVERY_S:
            self._report_due = True
            return
        self._reported, self._report_due = now, False
        try:
            write_report(self.outdir, self.options, current=self.results.values())
        except OutputError as err:
            if r is not None:
                r.warnings.append(f"report not updated: {err}")

    def _locked_result(self, case: Case, holder: dict, worker_host: str) -> CaseResult:
        return locked_result(case, holder, worker_host, self.outdir, self.options, self.base)

    # --------------------------------------------------------- deaths and cancel
    def _worker_died(self, w: _Worker, task: _Task) -> None:
        who = w.who
        self.pool.kill(w)
        self.pool.add()  # a fresh worker takes its place (the retry goes to whichever is idle first)
        case_dir = self.outdir / task.case.name
        freed = who is not None and drop_lock_of(self.outdir, case_dir, who)
        task.deaths += 1
        if task.deaths < 2:
            self.pending.appendleft(task)
            return
        if freed:  # nobody holds the case: its partial outputs may go
            _remove_outputs(case_dir, task.case.name)
            remove_temp_files(case_dir)
        r = CaseResult(task.case.name, task.case.input, "failed", WORKER_DIED, "resource", **self.base,
                       finished_at=_now())
        _record_quietly(case_dir, r)
        self._finish(r)

    def _stop_busy_workers(self) -> None:
        """Cancel the cases in progress and give them CANCEL_GRACE_S to clean up; finished ones count."""
        for w, _ in self.inflight.values():
            try:
                w.handle.cancel.remote()
            except Exception:  # noqa: BLE001 - a dead worker has nothing to cancel
                pass
        deadline = time.monotonic() + CANCEL_GRACE_S
        while self.inflight and time.monotonic() < deadline:
            refs = list(self.inflight)
            ready, _ = self.ray.wait(refs, num_returns=len(refs), timeout=max(0.0, deadline - time.monotonic()))
            for ref in ready:
                w, _task = self.inflight.pop(ref)
                self.pool.idle.append(w)
                try:
                    out = self.ray.get(ref)
                except Exception:  # noqa: BLE001 - died meanwhile: its lock is stale, taken over next run
                    continue
                if out[0] == "result":
                    self._finish(out[1])
            if not ready:
                break
        self._report(force=True)

    # ------------------------------------------------------------------ progress
    def _show_progress(self) -> None:
        if self.callback is None:
            return
        now = time.monotonic()
        busy = [w for w, _ in self.inflight.values()]
        for w in busy:
            if w.status_ref is None and now - w.polled >= STATUS_EVERY_S:
                w.status_ref, w.polled = w.handle.status.remote(), now
            elif w.status_ref is not None:
                ready, _ = self.ray.wait([w.status_ref], timeout=0)
                if ready:
                    try:
                        w.state = self.ray.get(ready[0])
                    except Exception:  # noqa: BLE001 - a dying worker: its run() result says more
                        pass
                    w.status_ref = None
        if now - self._shown < STATUS_EVERY_S:
            return
        self._shown = now
        running = [w.state for w in busy if w.state and w.state[0]]
        n, done = len(self.cases), len(self.results)
        fraction = (done + sum(min(max(s[1], 0.0), 1.0) for s in running)) / max(n, 1)
        text = f"{done}/{n} done, {len(busy)} running"
        if not busy and self.pool.starting:
            text += f", waiting for {len(self.pool.starting)} Ray worker(s) to start"
        if running:
            case, _f, stage = max(running, key=lambda s: s[1])
            text += f"; {case}: {stage}"
        self.callback(fraction, text)
