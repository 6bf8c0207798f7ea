"""Model registry: manifest, listing, resolving and verified downloads.

Downloads talk only to a local http.server on 127.0.0.1 (in a thread) with
short timeouts, so the tests are fast and never touch the network.
"""
from __future__ import annotations

import hashlib
import json
import http.server
import threading
import time
import zipfile
from pathlib import Path

import pytest

from bundle_fixtures import make_tiny_bundle
from LiverCTSegmentationLib import models
from LiverCTSegmentationLib.engine.bundle import ModelBundle
from LiverCTSegmentationLib.engine.errors import BundleError

TINY = "tiny-random-test"  # the name make_tiny_bundle writes into model.json


# ------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def tiny_zip(tmp_path_factory) -> bytes:
    root = tmp_path_factory.mktemp("tiny")
    folder = make_tiny_bundle(root / TINY, two_stage=False)
    zpath = root / "tiny.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for f in sorted(Path(folder).iterdir()):
            zf.write(f, f"{TINY}/{f.name}")
    return zpath.read_bytes()


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server API)
        srv = self.server
        mode, payload = srv.routes.get(self.path, ("404", b""))
        with srv.lock:
            srv.counts[self.path] = srv.counts.get(self.path, 0) + 1
            n = srv.counts[self.path]
        if mode == "404":
            self.send_error(404)
            return
        if mode == "stall":
            time.sleep(1.2)  # beyond the client's timeout
        self.send_response(200)
        self.send_header("Content-Type", "application/zip")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if mode == "drop_first" and n == 1:
            self.wfile.write(payload[: len(payload) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(payload)

    def log_message(self, *args) -> None:
        pass


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        pass  # the stalled handler writes to a socket the client already closed


@pytest.fixture
def server():
    srv = _Server(("127.0.0.1", 0), _Handler)
    srv.routes, srv.counts, srv.lock = {}, {}, threading.Lock()
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    srv.base = f"http://127.0.0.1:{srv.server_address[1]}"
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch) -> Path:
    """Own models folder; no proxy so that traffic goes straight to 127.0.0.1."""
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    d = tmp_path / "models"
    monkeypatch.setenv("LIVERCT_MODELS_DIR", str(d))
    return d


def manifest_for(server, path: str, payload: bytes, name: str = TINY, sha: str | None = None,
                 size: int | None = None) -> dict:
    return {
        "default": "liverct-phantom-demo",
        "models": [
            {"name": "liverct-phantom-demo", "version": "0.1.0", "description": "demo", "url": None,
             "sha256": None, "size_bytes": None, "bundled": True},
            {"name": name, "version": "0.0.1", "description": "tiny", "url": server.base + path,
             "sha256": sha or hashlib.sha256(payload).hexdigest(), "size_bytes": size or len(payload),
             "bundled": False},
        ],
    }


def leftovers(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir()) if d.exists() else []


FAST = {"timeout": 0.3, "retries": 2, "backoff": 0.01}


# ------------------------------------------------------------------ manifest
def test_shipped_manifest_and_default(repo_root: Path) -> None:
    data = models.load_manifest()
    assert data["default"] == "liverct"
    entry = next(m for m in data["models"] if m["name"] == data["default"])
    assert entry["bundled"] is True and entry["url"] is None
    assert models.default_bundle_dir() == repo_root / "LiverCTSegmentation/Resources/Models/liverct"
    infos = models.list_models()
    assert [i.name for i in infos if i.default] == ["liverct"]
    # The previous default and the phantom demo stay installed (comparison, test fixture), not as default.
    assert {"liverct-real", "liverct-phantom-demo"} <= {i.name for i in infos}


def test_shipped_bundles_load_and_stay_small(repo_root: Path) -> None:
    from LiverCTSegmentationLib.engine.bundle import ModelBundle

    for m in models.load_manifest()["models"]:
        folder = repo_root / "LiverCTSegmentation/Resources/Models" / m["name"]
        bundle = ModelBundle.load(folder)  # SHA256 and strict state dicts verified
        assert bundle.version == m["version"]
        size = sum(p.stat().st_size for p in folder.iterdir())
        assert size < 15e6, f"{m['name']} is {size / 1e6:.1f} MB"
    for name in ("liverct", "liverct-real"):
        real = ModelBundle.load(repo_root / "LiverCTSegmentation/Resources/Models" / name)
        assert real.description["demo"] is False and set(real.stages) == {"coarse", "fine"}
        assert all(st.orientation == "canonical" for st in real.stages.values())
    # The default's card states the licence its training data impose and carries its worst case.
    card = (repo_root / "LiverCTSegmentation/Resources/Models/liverct/MODEL_CARD.md").read_text(encoding="utf-8")
    assert "non-commercial research only" in card and "CC BY-NC-ND" in card and "worst_case.png" in card
    assert (repo_root / "LiverCTSegmentation/Resources/Models/liverct/worst_case.png").is_file()
    assert card.split("\n", 1)[1] == (repo_root / "Resources/MODEL_CARD.md").read_text(encoding="utf-8").split("\n", 1)[1]


@pytest.mark.parametrize("bad", ["../evil", "a/b", ".hidden", ""])
def test_manifest_rejects_unsafe_names(bad: str) -> None:
    with pytest.raises(BundleError, match="invalid name"):
        models.load_manifest({"models": [{"name": bad}]})


def test_manifest_requires_hash_for_urls() -> None:
    with pytest.raises(BundleError, match="sha256"):
        models.load_manifest({"models": [{"name": "x", "url": "http://127.0.0.1/x.zip", "size_bytes": 3}]})


def test_user_models_dir_env(isolated: Path, monkeypatch) -> None:
    assert models.user_models_dir() == isolated
    monkeypatch.delenv("LIVERCT_MODELS_DIR")
    assert models.user_models_dir().parts[-2:] == ("liverct-segmentation", "models")


# ----------------------------------------------------------------- downloads
def test_good_download_installs_and_loads(server, tiny_zip: bytes, isolated: Path) -> None:
    server.routes["/tiny.zip"] = ("ok", tiny_zip)
    man = manifest_for(server, "/tiny.zip", tiny_zip)
    assert {i.name: i.status for i in models.list_models(man)}[TINY] == "not downloaded"
    seen = []
    path = models.download_model(TINY, progress=lambda f, s: seen.append((f, s)), manifest=man, **FAST)
    assert path == isolated / TINY
    assert ModelBundle.load(path).name == TINY
    assert seen[-1] == (1.0, "download") and all(0 < f <= 1 for f, _ in seen)
    assert leftovers(isolated) == [TINY]  # no .part file or temp folder left
    # Installed: listed, resolvable by name, and not downloaded again.
    assert {i.name: i.status for i in models.list_models(man)}[TINY] == "installed"
    assert models.resolve_model(TINY, manifest=man) == path
    assert models.download_model(TINY, manifest=man, **FAST) == path
    assert server.counts["/tiny.zip"] == 1


def test_wrong_sha256_discarded(server, tiny_zip: bytes, isolated: Path) -> None:
    server.routes["/tiny.zip"] = ("ok", tiny_zip)
    man = manifest_for(server, "/tiny.zip", tiny_zip, sha="0" * 64)
    with pytest.raises(BundleError, match="SHA256"):
        models.download_model(TINY, manifest=man, **FAST)
    assert leftovers(isolated) == []
    assert server.counts["/tiny.zip"] == 1  # a bad hash is not a transient error


def test_oversized_download_refused(server, tiny_zip: bytes, isolated: Path) -> None:
    server.routes["/tiny.zip"] = ("ok", tiny_zip)
    man = manifest_for(server, "/tiny.zip", tiny_zip, size=len(tiny_zip) - 10)
    with pytest.raises(BundleError, match="larger"):
        models.download_model(TINY, manifest=man, **FAST)
    assert leftovers(isolated) == []


def test_stalled_server_retried_then_clear_error(server, tiny_zip: bytes, isolated: Path) -> None:
    server.routes["/tiny.zip"] = ("stall", tiny_zip)
    man = manifest_for(server, "/tiny.zip", tiny_zip)
    t0 = time.monotonic()
    with pytest.raises(BundleError, match="after 2 attempts"):
        models.download_model(TINY, manifest=man, **FAST)
    assert time.monotonic() - t0 < 5
    assert server.counts["/tiny.zip"] == 2
    assert leftovers(isolated) == []


def test_dropped_connection_retry_succeeds(server, tiny_zip: bytes, isolated: Path) -> None:
    server.routes["/tiny.zip"] = ("drop_first", tiny_zip)
    man = manifest_for(server, "/tiny.zip", tiny_zip)
    path = models.download_model(TINY, manifest=man, **FAST)
    assert server.counts["/tiny.zip"] == 2
    assert ModelBundle.load(path).name == TINY
    assert leftovers(isolated) == [TINY]


def test_http_404_not_retried(server, tiny_zip: bytes, isolated: Path) -> None:
    man = manifest_for(server, "/missing.zip", tiny_zip)
    with pytest.raises(BundleError, match="HTTP 404"):
        models.download_model(TINY, manifest=man, **FAST)
    assert server.counts["/missing.zip"] == 1
    assert leftovers(isolated) == []


def test_zip_with_traversal_refused(server, tmp_path: Path, isolated: Path) -> None:
    zpath = tmp_path / "evil.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.writestr("model.json", "{}")
        zf.writestr("../evil", "pwned")
    payload = zpath.read_bytes()
    server.routes["/evil.zip"] = ("ok", payload)
    man = manifest_for(server, "/evil.zip", payload)
    with pytest.raises(BundleError, match="refused"):
        models.download_model(TINY, manifest=man, **FAST)
    assert leftovers(isolated) == []
    assert not (isolated.parent / "evil").exists() and not (isolated / "evil").exists()


def test_archive_with_other_model_not_installed(server, tiny_zip: bytes, isolated: Path) -> None:
    server.routes["/tiny.zip"] = ("ok", tiny_zip)
    man = manifest_for(server, "/tiny.zip", tiny_zip, name="another-model")
    with pytest.raises(BundleError, match="wrong file"):
        models.download_model("another-model", manifest=man, **FAST)
    assert leftovers(isolated) == []


def test_unknown_and_unsupported_urls(server, tiny_zip: bytes) -> None:
    man = manifest_for(server, "/tiny.zip", tiny_zip)
    with pytest.raises(BundleError, match="No model named 'nope'"):
        models.download_model("nope", manifest=man, **FAST)
    man["models"][1]["url"] = "file:///etc/passwd"
    with pytest.raises(BundleError, match="scheme"):
        models.download_model(TINY, manifest=man, **FAST)


# ----------------------------------------------------------------- resolving
def test_resolve_folder_zip_and_errors(tmp_path: Path, tiny_zip: bytes, server, isolated: Path) -> None:
    folder = make_tiny_bundle(tmp_path / "b", two_stage=False)
    assert models.resolve_model(folder) == folder
    zpath = tmp_path / "bundle.zip"
    zpath.write_bytes(tiny_zip)
    extracted = models.resolve_model(zpath)
    assert ModelBundle.load(extracted).name == TINY
    assert models.resolve_model(zpath) == extracted  # extracted once, reused
    assert [p.name for p in (isolated / ".unpacked").iterdir()] == [extracted.name]

    man = manifest_for(server, "/tiny.zip", tiny_zip)
    with pytest.raises(BundleError, match="not downloaded yet"):
        models.resolve_model(TINY, manifest=man)
    with pytest.raises(BundleError) as err:
        models.resolve_model("no-such-model", manifest=man)
    assert "liverct-phantom-demo" in str(err.value) and TINY in str(err.value)
    with pytest.raises(BundleError, match="No file or folder"):
        models.resolve_model(tmp_path / "missing.zip", manifest=man)
    (tmp_path / "empty").mkdir()
    with pytest.raises(BundleError, match="no model.json"):
        models.resolve_model(tmp_path / "empty")


def test_unlisted_installed_bundle_is_listed(isolated: Path) -> None:
    make_tiny_bundle(isolated / "my-own-model", two_stage=False)
    infos = {i.name: i for i in models.list_models()}
    assert infos["my-own-model"].status == "installed"
    assert infos["my-own-model"].path == isolated / "my-own-model"
    d = infos["my-own-model"].to_dict()
    assert d["path"] == str(isolated / "my-own-model") and d["available"] is True and d["demo"] is True
    json.dumps(d)
    assert models.resolve_model("my-own-model") == isolated / "my-own-model"
