"""Atomic file writing for batch outputs: a file is either the old complete one or the
new complete one, never half written.

Each file is written to ``<name>.tmp-<pid>-<thread>`` in the same folder and then
``os.replace``-d onto its name. ``engine.io.atomic_write`` does the same for single
volumes, but with a callback API, extension-keeping temp names and different
messages; batch outputs need a context manager (``overlay.py`` uses it), the
``errno`` on the error (to stop the batch when the disk is full) and messages that
point at ``-o``.
"""
from __future__ import annotations

import contextlib
import csv
import errno
import io
import json
import os
import threading
from pathlib import Path
from typing import Any, Iterator, Sequence, Union

from ..engine.errors import OutputError


def _tmp_name(path: Path) -> Path:
    return path.with_name(f"{path.name}.tmp-{os.getpid()}-{threading.get_ident() % 100000}")


def as_output_error(err: OSError, path: Path) -> OutputError:
    """Actionable OutputError for an OSError on ``path``; keeps ``errno`` on it (ENOSPC stops a batch)."""
    if err.errno == errno.ENOSPC:
        msg = f"the disk is full while writing {path}. Free some space and rerun; completed cases are kept."
    elif err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        msg = f"cannot write {path}: permission denied. Choose a writable output folder with -o."
    else:
        msg = f"cannot write {path}: {err.strerror or err}. Check the output folder."
    out = OutputError(msg)
    out.errno = err.errno  # type: ignore[attr-defined]
    return out


def unlink_quietly(p: Path) -> None:
    """Remove ``p`` if it can be removed; a missing or undeletable file is not an error here."""
    with contextlib.suppress(OSError):
        os.unlink(p)


@contextlib.contextmanager
def atomic_path(path: Union[str, os.PathLike]) -> Iterator[Path]:
    """Yield a temp path in the same folder; on success ``os.replace`` it onto ``path``.
    On any failure (including KeyboardInterrupt) the temp file is removed."""
    path = Path(path)
    tmp = _tmp_name(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as err:
        unlink_quietly(tmp)
        raise as_output_error(err, path) from err
    except BaseException:
        unlink_quietly(tmp)
        raise


def write_bytes_atomic(path: Union[str, os.PathLike], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (fsync-ed before the rename)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def write_json_atomic(path: Union[str, os.PathLike], obj: Any) -> None:
    """Pretty UTF-8 JSON (numpy scalars/arrays, Paths and ``to_dict()`` objects allowed), atomically."""
    write_bytes_atomic(path, (json.dumps(obj, indent=2, ensure_ascii=False, default=_json_default) + "\n").encode("utf-8"))


def _json_default(o: Any) -> Any:
    try:
        import numpy as np

        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "to_dict"):
        return o.to_dict()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def write_csv_atomic(path: Path, rows: list[dict], default_columns: Sequence[str]) -> None:
    """CSV with the first row's keys as header (``default_columns`` when there are no rows), atomically."""
    cols = list(rows[0].keys()) if rows else list(default_columns)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n", extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: (v.item() if hasattr(v, "item") else v) for k, v in r.items()})
    write_bytes_atomic(path, buf.getvalue().encode("utf-8"))


def remove_temp_files(folder: Path) -> None:
    """Remove leftovers of interrupted atomic writes. Only call while owning ``folder``."""
    try:
        entries = list(folder.iterdir())
    except OSError:
        return
    for p in entries:
        if ".tmp-" in p.name and p.is_file():
            unlink_quietly(p)
