"""liverseg against a real PACS: Orthanc with its DICOMweb plugin (orthanc_server.py starts it on 127.0.0.1
with authentication). Upload a CT series, segment it by study URL (QIDO-RS + WADO-RS), --push the SEG and
SR (STOW-RS), query the SEG back and check it voxel for voxel against the local result; resume by SOP
instance UIDs; a failing study never stops the others; credentials only from the environment or netrc."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("dicomweb_client")
pytest.importorskip("highdicom")

import orthanc_server  # noqa: E402
from dcmqi_readback import seg_to_labelmap_on  # noqa: E402
from dicom_cases import box_bundle, write_series  # noqa: E402
from LiverCTSegmentationLib.batch import dicomweb  # noqa: E402
from LiverCTSegmentationLib.batch.cli import main  # noqa: E402
from LiverCTSegmentationLib.engine import io  # noqa: E402


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    yield from orthanc_server.orthanc_fixture(tmp_path_factory)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return box_bundle(tmp_path_factory.mktemp("model") / "box")


@pytest.fixture
def creds(monkeypatch, tmp_path):
    monkeypatch.delenv(dicomweb.ENV_TOKEN, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv(dicomweb.ENV_USER, orthanc_server.USER)
    monkeypatch.setenv(dicomweb.ENV_PASSWORD, orthanc_server.PASSWORD)
    return monkeypatch


def _study(orthanc, tmp_path: Path, name: str, orientation: str = "LPS") -> tuple[str, str]:
    import pydicom

    files = write_series(tmp_path / name, orientation)
    orthanc_server.upload(orthanc, files)
    ds = pydicom.dcmread(str(files[0]), stop_before_pixels=True)
    return str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID)


def _report(outdir: Path) -> dict[str, dict]:
    with open(outdir / "report.csv", newline="", encoding="utf-8") as f:
        return {r["case"]: r for r in csv.DictReader(f)}


def test_segment_by_url_push_and_read_the_seg_back(orthanc, bundle, creds, tmp_path: Path) -> None:
    study, series = _study(orthanc, tmp_path, "ct_a", "RAS")
    client = dicomweb.client_for(orthanc.dicomweb)
    missing = f"{orthanc.dicomweb}/studies/1.2.3.4.5.6.7.8.9"  # no such study: fails alone
    out = tmp_path / "out"
    argv = [f"{orthanc.dicomweb}/studies/{study}", missing, "-o", str(out), "--model", str(bundle),
            "--no-overlay", "-q", "--push", "--dicom-sr"]
    assert main(argv) == 1  # one study failed
    # A report row per study, named by its StudyInstanceUID.
    rows = _report(out)
    assert rows[study]["status"] == "ok" and rows[study]["input"] == f"{orthanc.dicomweb}/studies/{study}"
    assert rows["1.2.3.4.5.6.7.8.9"]["status"] == "failed"
    assert "has no CT series" in rows["1.2.3.4.5.6.7.8.9"]["error"]

    # The SEG and SR are in the study now; fetch the SEG back from the PACS and read it with dcmqi.
    found = {dicomweb._value(s, "00080060"): str(dicomweb._value(s, "0020000E"))
             for s in client.search_for_series(study, fields=["Modality"])}
    assert set(found) == {"CT", "SEG", "SR"}
    (seg_ds,) = client.retrieve_series(study, found["SEG"])
    local_seg = out / study / f"{study}_seg.dcm"
    import pydicom

    assert seg_ds.SOPInstanceUID == pydicom.dcmread(str(local_seg), stop_before_pixels=True).SOPInstanceUID
    seg_ds.save_as(str(tmp_path / "pacs_seg.dcm"), enforce_file_format=True)
    label_path = out / study / f"{study}_label.nii.gz"
    label = io.read_volume(label_path).array
    assert set(np.unique(label)) == {0, 1, 2}
    back = seg_to_labelmap_on(tmp_path / "pacs_seg.dcm", label_path, tmp_path / "dcmqi")
    assert np.array_equal(back, label), f"{int((back != label).sum())} voxels differ"
    ref_uids = {r.ReferencedSOPInstanceUID for r in seg_ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    ct_uids = {dicomweb._value(i, "00080018") for i in client.search_for_instances(study, series)}
    assert ref_uids == ct_uids
    stats = json.loads((out / study / f"{study}_stats.json").read_text())
    assert stats["pacs"]["stored"] == [f"{study}_seg.dcm", f"{study}_sr.dcm"]
    assert stats["input_sha256"] == dicomweb.fingerprint(dicomweb.parse_url(rows[study]["input"]))["sha256"]

    # Rerun: resumed by the series' SOP instance UIDs, nothing fetched or pushed again.
    assert main(argv) == 1
    assert _report(out)[study]["status"] == "skipped"
    assert len([s for s in client.search_for_series(study, fields=["Modality"])
                if dicomweb._value(s, "00080060") == "SEG"]) == 1


def test_series_url_and_changed_series_is_redone(orthanc, bundle, creds, tmp_path: Path) -> None:
    import requests

    study, series = _study(orthanc, tmp_path, "ct_b")
    url = f"{orthanc.dicomweb}/studies/{study}/series/{series}"
    out = tmp_path / "out"
    argv = [url, "-o", str(out), "--model", str(bundle), "--no-overlay", "-q"]
    assert main(argv) == 0 and _report(out)[series]["status"] == "ok"
    assert (out / series / f"{series}_seg.dcm").is_file()
    before = dicomweb.fingerprint(dicomweb.parse_url(url))
    # Remove the last slice on the PACS (Orthanc's REST API): another instance list, another fingerprint.
    auth = (orthanc_server.USER, orthanc_server.PASSWORD)
    ids = requests.post(f"{orthanc.root}/tools/lookup", data=series, auth=auth, timeout=10).json()
    instances = requests.get(f"{orthanc.root}/series/{ids[0]['ID']}/instances", auth=auth, timeout=10).json()
    last = max(instances, key=lambda i: int(i["MainDicomTags"].get("InstanceNumber", 0)))
    requests.delete(f"{orthanc.root}/instances/{last['ID']}", auth=auth, timeout=10).raise_for_status()
    after = dicomweb.fingerprint(dicomweb.parse_url(url))
    assert after["files"] == before["files"] - 1 and after["sha256"] != before["sha256"]
    assert main(argv) == 0 and _report(out)[series]["status"] == "ok"  # redone, not skipped


def test_wrong_password_fails_the_study_with_the_reason(orthanc, bundle, creds, tmp_path: Path) -> None:
    study, _series = _study(orthanc, tmp_path, "ct_c")
    creds.setenv(dicomweb.ENV_PASSWORD, "wrong")
    out = tmp_path / "out"
    assert main([f"{orthanc.dicomweb}/studies/{study}", "-o", str(out), "--model", str(bundle), "-q"]) == 1
    (row,) = _report(out).values()
    assert row["status"] == "failed" and "HTTP 401" in row["error"] and "credentials" in row["error"]


def test_netrc_credentials(orthanc, bundle, creds, tmp_path: Path) -> None:
    study, _series = _study(orthanc, tmp_path, "ct_d")
    creds.delenv(dicomweb.ENV_USER)
    creds.delenv(dicomweb.ENV_PASSWORD)
    netrc = tmp_path / "netrc"
    netrc.write_text(f"machine 127.0.0.1 login {orthanc_server.USER} password {orthanc_server.PASSWORD}\n")
    netrc.chmod(0o600)
    creds.setenv("NETRC", str(netrc))
    out = tmp_path / "out"
    assert main([f"{orthanc.dicomweb}/studies/{study}", "-o", str(out), "--model", str(bundle), "-q",
                 "--no-overlay"]) == 0
    assert _report(out)[study]["status"] == "ok"


def test_credentials_in_the_url_are_refused_and_never_reported(tmp_path: Path, bundle) -> None:
    url = "https://bob:hunter2@pacs.example.org/dicom-web/studies/1.2.3"
    out = tmp_path / "out"
    assert main([url, "-o", str(out), "--model", str(bundle), "-q"]) == 1
    text = (out / "report.csv").read_text()
    assert "hunter2" not in text and "carries credentials" in text
    assert not any("hunter2" in p.read_text(errors="ignore") for p in out.rglob("*") if p.is_file())


def test_tls_is_verified_by_default(monkeypatch) -> None:
    for k in (dicomweb.ENV_CA_BUNDLE, dicomweb.ENV_TOKEN, dicomweb.ENV_USER):
        monkeypatch.delenv(k, raising=False)
    assert dicomweb.make_session().verify is True
    monkeypatch.setenv(dicomweb.ENV_CA_BUNDLE, "/etc/ssl/private-ca.pem")
    monkeypatch.setenv(dicomweb.ENV_TOKEN, "tok")
    s = dicomweb.make_session()
    assert s.verify == "/etc/ssl/private-ca.pem" and s.headers["Authorization"] == "Bearer tok"


@pytest.mark.parametrize("url, why", [
    ("https://pacs.example.org/dicom-web/series/1.2.3", "not a DICOMweb study or series URL"),
    ("https://pacs.example.org/dicom-web/studies/1.2.3?x=1", "query"),
])
def test_malformed_urls(url: str, why: str) -> None:
    with pytest.raises(Exception, match=why):
        dicomweb.parse_url(url)
    assert dicomweb.parse_url("https://p.org/dw/studies/1.2/series/3.4/") == dicomweb.StudyRef("https://p.org/dw", "1.2", "3.4")
