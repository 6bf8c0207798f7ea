"""DICOMweb (PACS) inputs and outputs of a batch, with dicomweb-client: QIDO-RS finds a study's CT
series and its instances, WADO-RS fetches them, STOW-RS stores the SEG (and SR) back.

An input URL is ``<service root>/studies/<StudyInstanceUID>`` or ``.../series/<SeriesInstanceUID>``.
Credentials never come from the command line (a URL with ``user:password@`` is refused): a bearer
token in LIVERSEG_DICOMWEB_TOKEN, or LIVERSEG_DICOMWEB_USER + LIVERSEG_DICOMWEB_PASSWORD, or else
the host's entry in ~/.netrc (or $NETRC), which requests reads itself. TLS certificates are always
verified (a private CA: LIVERSEG_DICOMWEB_CA_BUNDLE or REQUESTS_CA_BUNDLE).

The engine never imports this module: a fetched series is an ordinary DICOM folder to it.
"""
from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence
from urllib.parse import urlsplit

from ..engine.errors import InputError, LiverSegError

CT_MODALITY = "CT"
ENV_TOKEN, ENV_USER, ENV_PASSWORD = "LIVERSEG_DICOMWEB_TOKEN", "LIVERSEG_DICOMWEB_USER", "LIVERSEG_DICOMWEB_PASSWORD"
ENV_CA_BUNDLE = "LIVERSEG_DICOMWEB_CA_BUNDLE"
_URL = re.compile(r"^(?P<root>https?://.+?)/studies/(?P<study>[0-9.]+)(?:/series/(?P<series>[0-9.]+))?/?$")
_CLIENTS: dict[tuple, Any] = {}


class PacsError(LiverSegError):
    """The PACS could not be reached or refused a request (network, authentication, server error)."""

    code = "pacs"


@dataclass(frozen=True)
class StudyRef:
    root: str  # DICOMweb service root, e.g. https://pacs.example.org/dicom-web
    study_uid: str
    series_uid: Optional[str] = None

    @property
    def url(self) -> str:
        return f"{self.root}/studies/{self.study_uid}" + (f"/series/{self.series_uid}" if self.series_uid else "")


def is_dicomweb_url(text: str) -> bool:
    """True for an http(s) URL: such an input is a DICOMweb study or series, never a file."""
    return str(text).lower().startswith(("http://", "https://"))


def redact(url: str) -> str:
    """``url`` without any user:password part (for messages and the report)."""
    parts = urlsplit(str(url))
    if not (parts.username or parts.password):
        return str(url)
    return parts._replace(netloc=parts.hostname + (f":{parts.port}" if parts.port else "")).geturl()


def parse_url(url: str) -> StudyRef:
    """`StudyRef` of a DICOMweb study or series URL; `InputError` says what is wrong with it."""
    url = str(url).strip()
    parts = urlsplit(url)
    if parts.username or parts.password:
        raise InputError(f"'{parts.scheme}://{parts.hostname}...' carries credentials in the URL, where they would "
                         f"be seen by everyone on this machine. Remove them and set {ENV_USER}/{ENV_PASSWORD} "
                         f"or {ENV_TOKEN}, or use ~/.netrc.")
    if parts.query or parts.fragment:
        raise InputError(f"'{url}' has a query or fragment; give a plain DICOMweb study or series URL "
                         "(<root>/studies/<StudyInstanceUID>[/series/<SeriesInstanceUID>]).")
    m = _URL.match(url)
    if not m:
        raise InputError(f"'{url}' is not a DICOMweb study or series URL. Give "
                         "<root>/studies/<StudyInstanceUID> or <root>/studies/<uid>/series/<SeriesInstanceUID>.")
    return StudyRef(m.group("root"), m.group("study"), m.group("series"))


def case_name(ref: StudyRef) -> str:
    """A stable, file-system-safe case name: the series UID, else the study UID (report row per study)."""
    return ref.series_uid or ref.study_uid


def make_session() -> Any:
    """requests session with the credentials of the environment (see the module docstring)."""
    import requests

    session = requests.Session()
    session.verify = os.environ.get(ENV_CA_BUNDLE) or True  # never off
    token, user = os.environ.get(ENV_TOKEN), os.environ.get(ENV_USER)
    if token:
        session.headers["Authorization"] = f"Bearer {token}"
    elif user:
        session.auth = (user, os.environ.get(ENV_PASSWORD, ""))
    # else: requests takes the host's ~/.netrc ($NETRC) entry, if any (trust_env)
    return session


def client_for(root: str) -> Any:
    """One DICOMweb client per service root and credentials (a changed environment gets a new one)."""
    key = (root, *(os.environ.get(k) for k in (ENV_TOKEN, ENV_USER, ENV_PASSWORD, ENV_CA_BUNDLE)))
    if key not in _CLIENTS:
        try:
            from dicomweb_client.api import DICOMwebClient
        except ImportError as err:
            raise InputError("DICOMweb inputs need the dicomweb-client package: "
                             "pip install 'liverct-segmentation[dicom]'.") from err
        _CLIENTS[key] = DICOMwebClient(url=root, session=make_session(), timeout=(10, 120))
    return _CLIENTS[key]


def _value(item: dict, tag: str, default: Any = None) -> Any:
    v = (item.get(tag) or {}).get("Value")
    return v[0] if v else default


def _pacs_call(what: str, ref: StudyRef, fn, *args, **kw) -> Any:
    """Run one DICOMweb request; network and HTTP failures become a `PacsError` naming the study."""
    import requests

    try:
        return fn(*args, **kw)
    except requests.HTTPError as err:
        status = getattr(err.response, "status_code", "?")
        hint = {401: "check the credentials (LIVERSEG_DICOMWEB_USER/_PASSWORD, _TOKEN or ~/.netrc)",
                403: "the account may not access this study", 404: "check the study/series UID in the URL"}
        raise PacsError(f"{what} {ref.url} failed: HTTP {status}; "
                        f"{hint.get(status, 'see the PACS log')}.") from err
    except requests.exceptions.SSLError as err:
        raise PacsError(f"{what} {ref.url} failed: the TLS certificate could not be verified ({err}). "
                        f"Give the PACS's CA certificate in {ENV_CA_BUNDLE}.") from err
    except requests.RequestException as err:
        raise PacsError(f"{what} {ref.url} failed: {type(err).__name__}: {err}. Check the URL and the network.") from err


def resolve_series(ref: StudyRef) -> StudyRef:
    """The CT series to segment: the URL's own, or the study's CT series with the most instances (QIDO-RS)."""
    if ref.series_uid:
        return ref
    client = client_for(ref.root)
    found = _pacs_call("Searching the series of", ref, client.search_for_series, ref.study_uid,
                       fields=["Modality", "NumberOfSeriesRelatedInstances"]) or []
    cts = [s for s in found if _value(s, "00080060") == CT_MODALITY]
    if not cts:
        kinds = sorted({str(_value(s, "00080060", "?")) for s in found})
        raise InputError(f"The study {ref.url} has no CT series (it has {', '.join(kinds) or 'no series'}). "
                         "Give the URL of a study with a CT series.")
    best = max(cts, key=lambda s: int(_value(s, "00201209", 0) or 0))
    return StudyRef(ref.root, ref.study_uid, str(_value(best, "0020000E")))


def fingerprint(ref: StudyRef) -> dict:
    """Resume key of a PACS series: SHA256 of its sorted SOP instance UIDs (QIDO-RS; no pixel data fetched).

    DICOMweb servers publish no per-instance checksum, so a changed instance that kept its UID
    (which DICOM forbids) would not be noticed; an added or removed instance is."""
    ref = resolve_series(ref)
    client = client_for(ref.root)
    found = _pacs_call("Listing the instances of", ref, client.search_for_instances, ref.study_uid,
                       ref.series_uid, fields=["SOPInstanceUID"], get_remaining=True) or []
    uids = sorted(str(_value(i, "00080018")) for i in found)
    if not uids:
        raise InputError(f"The series {ref.url} has no instances on the PACS. Check the URL.")
    h = hashlib.sha256()
    for u in [ref.study_uid, ref.series_uid or "", *uids]:
        h.update(u.encode() + b"\0")
    return {"sha256": h.hexdigest(), "files": len(uids), "size": 0, "method": "dicomweb-sop-instance-uids",
            "study_uid": ref.study_uid, "series_uid": ref.series_uid}


def fetch_series(ref: StudyRef, folder: Path) -> list[Path]:
    """Fetch the series (WADO-RS) into ``folder``, one file per instance; returns the files."""
    ref = resolve_series(ref)
    client = client_for(ref.root)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []

    def fetch() -> None:
        for ds in client.iter_series(ref.study_uid, ref.series_uid):
            p = folder / f"{len(paths):05d}.dcm"
            ds.save_as(str(p), enforce_file_format=True)
            paths.append(p)

    _pacs_call("Fetching", ref, fetch)
    if not paths:
        raise InputError(f"The PACS returned no instances for {ref.url}. Check the URL.")
    return paths


def push(ref: StudyRef, files: Sequence[Path]) -> None:
    """Store the given DICOM files (the SEG, the SR) in the study with STOW-RS."""
    import pydicom

    datasets = [pydicom.dcmread(str(f)) for f in files]
    client = client_for(ref.root)
    response = _pacs_call("Storing results in", ref, client.store_instances, datasets, ref.study_uid)
    failed = getattr(response, "FailedSOPSequence", None) if response is not None else None
    if failed:
        reasons = ", ".join(str(getattr(f, "FailureReason", "?")) for f in failed)
        raise PacsError(f"The PACS refused {len(failed)} of {len(datasets)} result objects for {ref.url} "
                        f"(failure reasons {reasons}). See the PACS log.")
