"""Per-case locks and the output-folder mutex, so concurrent runs on one OUTDIR never
work on the same case.

A case is claimed with an ``O_EXCL`` lock file saying whose it is (pid, user, host,
start time). A lock of a dead pid on this host is stale and taken over; the check-and-take-over runs under a
folder-level mutex so two runs cannot both take over the same lock.
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from pathlib import Path
from typing import Iterator, Optional

from .atomic_files import as_output_error, unlink_quietly
from ..engine.errors import OutputError

LOCK_NAME = ".lock"
FOLDER_LOCK_NAME = ".liverseg-folder.lock"


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    if pid == os.getpid():
        return True
    try:
        import psutil

        if not psutil.pid_exists(pid):
            return False
        try:
            return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False
    except ImportError:  # pragma: no cover
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


@contextlib.contextmanager
def folder_mutex(outdir: Path, timeout: float = 120.0) -> Iterator[None]:
    """Short critical section shared by all runs on ``outdir`` (lock take-over, report).

    POSIX: ``fcntl.flock`` (released by the kernel if the process dies). Windows:
    ``msvcrt.locking``. Either way a crashed holder cannot block others."""
    path = outdir / FOLDER_LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise as_output_error(err, path) from err
    try:
        try:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        except ImportError:  # pragma: no cover - Windows
            import msvcrt

            deadline = time.monotonic() + timeout
            while True:
                try:
                    msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise OutputError(f"timed out waiting for {path}; is another liverseg run stuck?")
                    time.sleep(0.05)
            try:
                yield
            finally:
                os.lseek(fd, 0, 0)
                msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
    finally:
        os.close(fd)


def _read_lock(path: Path) -> Optional[dict]:
    try:
        return json.loads(path.read_text(encoding="utf-8") or "{}")
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}


def _whoami() -> str:
    try:
        import getpass

        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no user name in some containers
        return ""


def describe_holder(holder: dict) -> str:
    """'locked by PID 123 (user ana) on HOST since 2026-12-04 13:00:05' from a lock's content."""
    started = holder.get("started")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if isinstance(started, (int, float)) else "?"
    user = f" (user {holder['user']})" if holder.get("user") else ""
    return f"locked by PID {holder.get('pid', '?')}{user} on {holder.get('host', '?')} since {when}"


class CaseLocked(Exception):
    def __init__(self, holder: dict):
        super().__init__(describe_holder(holder))
        self.holder = holder


def claim_case(outdir: Path, case_dir: Path) -> Path:
    """Create ``case_dir/.lock`` with O_EXCL. Takes over a stale lock (dead pid on this
    host, or an unreadable lock older than a minute). Raises CaseLocked otherwise."""
    lock = case_dir / LOCK_NAME
    host = socket.gethostname()
    payload = json.dumps({"pid": os.getpid(), "host": host, "user": _whoami(), "started": time.time(),
                          "program": "liverseg"}).encode()
    with folder_mutex(outdir):
        try:
            case_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise as_output_error(err, case_dir) from err
        for _ in range(2):
            try:
                fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                holder = _read_lock(lock)
                if holder is None:
                    continue  # vanished meanwhile: retry
                stale = False
                if holder.get("host") == host and isinstance(holder.get("pid"), int):
                    stale = not _pid_alive(holder["pid"]) or holder["pid"] == os.getpid()
                elif not holder:
                    # Empty/garbled: a kill between create and write. Give a writer a moment.
                    try:
                        stale = time.time() - lock.stat().st_mtime > 60
                    except FileNotFoundError:
                        continue
                if not stale:
                    raise CaseLocked(holder)
                unlink_quietly(lock)
                continue
            except OSError as err:
                raise as_output_error(err, lock) from err
            try:
                os.write(fd, payload)
            finally:
                os.close(fd)
            return lock
        raise CaseLocked(_read_lock(lock) or {})


def release_case(lock: Path) -> None:
    holder = _read_lock(lock)
    if holder and holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
        unlink_quietly(lock)
