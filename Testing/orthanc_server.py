"""A real Orthanc PACS with its DICOMweb plugin for the tests: started on 127.0.0.1 on a free port with
a generated configuration (HTTP authentication on, remote access off, storage in a temporary folder),
stopped at the end. Missing Orthanc: the tests skip with the reason, but FAIL when CI=true or
LIVERCT_REQUIRE_ORTHANC=1 (.ci/run sets it; scripts/install_orthanc.sh installs it)."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import pytest
from local_ports import free_port

PLUGIN_DIRS = ("/usr/share/orthanc/plugins", "/usr/lib/orthanc/plugins")
USER, PASSWORD = "liverseg-test", "s3cret-not-for-prod"


@dataclass
class Orthanc:
    port: int
    process: subprocess.Popen
    log: Path

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def dicomweb(self) -> str:
        return f"{self.root}/dicom-web"


def _required() -> bool:
    return os.environ.get("LIVERCT_REQUIRE_ORTHANC") == "1" or os.environ.get("CI", "").lower() == "true"


def _missing(reason: str) -> None:
    msg = f"{reason}; run scripts/install_orthanc.sh (as root)"
    if _required():
        pytest.fail(f"{msg} (required here: CI/LIVERCT_REQUIRE_ORTHANC=1)")
    pytest.skip(msg)


def _find() -> tuple[str, str]:
    exe = shutil.which("Orthanc") or next((p for p in ("/usr/sbin/Orthanc", "/usr/bin/Orthanc")
                                           if os.access(p, os.X_OK)), None)
    if not exe:
        _missing("Orthanc is not installed")
    plugin = next((str(Path(d) / "libOrthancDicomWeb.so") for d in PLUGIN_DIRS
                   if (Path(d) / "libOrthancDicomWeb.so").exists()), None)
    if not plugin:
        _missing("Orthanc's DICOMweb plugin (orthanc-dicomweb) is not installed")
    return exe, plugin  # type: ignore[return-value]


def _up(port: int) -> bool:
    import requests

    try:
        return requests.get(f"http://127.0.0.1:{port}/system", auth=(USER, PASSWORD), timeout=1).ok
    except requests.RequestException:
        return False


def start_orthanc(folder: Path, timeout: float = 30.0) -> Orthanc:
    exe, plugin = _find()
    folder.mkdir(parents=True, exist_ok=True)
    port, dicom_port = free_port(), free_port()
    config = {
        "Name": "liverseg-test", "StorageDirectory": str(folder / "db"), "IndexDirectory": str(folder / "db"),
        "HttpPort": port, "DicomPort": dicom_port, "DicomServerEnabled": False,
        "RemoteAccessAllowed": False, "AuthenticationEnabled": True, "RegisteredUsers": {USER: PASSWORD},
        "Plugins": [plugin], "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True},
        "HttpDescribeErrors": True, "StableAge": 1,
    }
    cfg = folder / "orthanc.json"
    cfg.write_text(json.dumps(config, indent=1))
    log = folder / "orthanc.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([exe, str(cfg)], stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"Orthanc exited with {proc.returncode} at start:\n{log.read_text()[-3000:]}")
        if _up(port):
            return Orthanc(port, proc, log)
        time.sleep(0.2)
    stop_orthanc(Orthanc(port, proc, log))
    pytest.fail(f"Orthanc did not answer within {timeout:.0f} s:\n{log.read_text()[-3000:]}")


def stop_orthanc(server: Optional[Orthanc]) -> None:
    if server is None or server.process.poll() is not None:
        return
    server.process.send_signal(signal.SIGTERM)  # this process only: it was started by start_orthanc
    try:
        server.process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait(timeout=5)


def upload(server: Orthanc, files) -> None:
    """Store DICOM files through Orthanc's REST API (not DICOMweb: the code under test is not used)."""
    import requests

    for f in files:
        r = requests.post(f"{server.root}/instances", data=Path(f).read_bytes(), auth=(USER, PASSWORD), timeout=30)
        r.raise_for_status()


def orthanc_fixture(tmp_path_factory) -> Iterator[Orthanc]:
    server = start_orthanc(tmp_path_factory.mktemp("orthanc"))
    try:
        yield server
    finally:
        stop_orthanc(server)
