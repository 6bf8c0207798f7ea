"""Which files a case reads, and the refusal of anything that is not a regular file.

A FIFO, a character device (``/dev/zero``) or a socket never ends or never answers:
reading one hangs. So every path a reader will open (the volume file, the detached
data files a ``.mhd``/``.nhdr`` header names, every file of a DICOM folder) is checked
here with ``stat`` before a byte is read. ``resume`` hashes the same list, so the
fingerprint covers every byte the case reads.
"""
from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from .errors import InputError

HEADER_MAX_BYTES = 1 << 20  # a .mhd/.nhdr header is text of a few hundred bytes
DICOM_MAX_DEPTH = 3  # how deep a DICOM folder's series are looked for (engine/dicom.py walks the same)


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISDIR(mode):
        return "a folder"
    return "not a regular file"


def require_regular_file(path: Path, role: str = "input") -> os.stat_result:
    """stat ``path`` (following links) and refuse anything but a regular file, with a specific message."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        hint = "Copy it next to the header." if role.startswith("data file") else "Check the path."
        raise InputError(f"The {role} '{path}' is missing (it does not exist). {hint}") from None
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise InputError(f"The {role} '{path}' is a symbolic link loop (it points back to itself). "
                             "Fix or remove the link.") from err
        raise InputError(f"The {role} '{path}' cannot be opened ({err.strerror or err}). "
                         "Check the path and its permissions.") from err
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"The {role} '{path}' is {_kind(st.st_mode)}, not a regular file: only image files "
                         "(and folders of DICOM files) are read. Copy the image to a file and give that.")
    return st


def _header_fields(path: Path, sep: str) -> dict[str, str]:
    st = require_regular_file(path)
    with open(path, "rb") as fh:
        head = fh.read(min(st.st_size, HEADER_MAX_BYTES))
    fields: dict[str, str] = {}
    for raw in head.split(b"\n"):
        line = raw.decode("latin-1").strip()
        if sep in line and not line.startswith("#"):
            key, value = line.split(sep, 1)
            fields.setdefault(key.strip().lower(), value.strip())
        if sep == "=" and line.replace(" ", "").lower().startswith("elementdatafile="):
            break  # MetaImage: the header ends at ElementDataFile (a .mha's voxels follow)
        if sep == ":" and not line and fields:
            break  # NRRD: a blank line ends the header
    return fields


def _listed(path: Path, value: str, key: str) -> list[Path]:
    """Files named by a detached-data field: one name, ``LIST`` (names follow the header) or a pattern."""
    if not value or value.upper() == "LOCAL":
        return []
    parts = value.split()
    if parts[0].upper() == "LIST":
        with open(path, "rb") as fh:
            text = fh.read(HEADER_MAX_BYTES).decode("latin-1")
        lines = [ln.strip() for ln in text.splitlines()]
        start = next((i for i, ln in enumerate(lines) if ln.replace(" ", "").lower().startswith(key)), len(lines))
        return [path.parent / ln for ln in lines[start + 1:] if ln]
    if "%" in parts[0] and len(parts) >= 4:  # printf pattern: "name%03d.raw min max step"
        lo, hi, step = (int(x) for x in parts[1:4])
        if step == 0 or abs(hi - lo) // abs(step) > 100000:
            raise InputError(f"'{path}' names an impossible data file pattern '{value}'. Fix the header.")
        return [path.parent / (parts[0] % i) for i in range(lo, hi + (1 if step > 0 else -1), step)]
    return [path.parent / value]


def detached_data_files(path: Path) -> list[Path]:
    """Data files a ``.mhd``/``.nhdr`` header points to (empty for other formats)."""
    name = path.name.lower()
    if name.endswith(".mhd"):
        value = _header_fields(path, "=").get("elementdatafile", "")
        return _listed(path, value, "elementdatafile=")
    if name.endswith(".nhdr"):
        fields = _header_fields(path, ":")
        value = fields.get("data file", fields.get("datafile", ""))
        return _listed(path, value, "datafile:")
    return []


def dicom_folder_files(folder: Path) -> list[Path]:
    """Every file a DICOM folder's reader may open (the folder and its subfolders down to
    ``DICOM_MAX_DEPTH``), hidden files excluded; anything that is not a regular file is refused."""
    out: list[Path] = []
    base = len(folder.parts)
    for root, dirs, files in os.walk(folder):
        if len(Path(root).parts) - base >= DICOM_MAX_DEPTH:
            dirs[:] = []
        dirs.sort()
        for name in sorted(files):
            if not name.startswith("."):
                f = Path(root) / name
                require_regular_file(f, "file in the DICOM folder")
                out.append(f)
    return out


def files_read(path: Path, kind: str = "file") -> list[Path]:
    """Every file reading ``path`` opens, each checked to be a regular file."""
    if kind == "dicom" or path.is_dir():
        return dicom_folder_files(path)
    require_regular_file(path)
    extra = detached_data_files(path)
    for f in extra:
        require_regular_file(f, f"data file named in '{path.name}'")
    return [path] + extra
