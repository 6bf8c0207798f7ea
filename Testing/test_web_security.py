"""Who may drive ``liverseg-web``: the Origin check, the per-launch secret, the message cap,
the refused remote bind and the CT list without the app's own results.

The live tests start the real app (``python -m LiverCTSegmentationLib.web.app``) on
127.0.0.1 and talk wslink to it with aiohttp's WebSocket client, the way a web page
in the user's browser could. Needs the ``web`` extra for those; skipped without it
unless ``LIVERCT_REQUIRE_BROWSER=1``.
"""
from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from LiverCTSegmentationLib.web import security
from LiverCTSegmentationLib.web.safe_paths import DataFolder
from local_ports import free_port

ROOT = Path(__file__).resolve().parents[1]
PUBLIC_DEFAULT_SECRET = "wslink-secret"  # trame's default: known to every web page
MAX_UPLOAD_MB = 1


def _need_web_extra() -> None:
    try:
        import aiohttp  # noqa: F401
        import trame_slicer  # noqa: F401
        import wslink  # noqa: F401
    except ImportError:
        if os.environ.get("LIVERCT_REQUIRE_BROWSER") == "1":
            pytest.fail("LIVERCT_REQUIRE_BROWSER=1 but the web extra (trame-slicer) is not installed", pytrace=False)
        pytest.skip("web extra (trame-slicer) not installed")


# ------------------------------------------------------------------ plain rules
@pytest.mark.parametrize("origin, host, remote, ok", [
    ("http://127.0.0.1:8080", "127.0.0.1:8080", False, True),
    ("http://localhost:9000", "localhost:9000", False, True),        # SSH tunnel on another local port
    ("http://[::1]:8080", "[::1]:8080", False, True),
    ("https://evil.example", "127.0.0.1:8080", False, False),        # any page the user visits
    ("http://localhost:3000", "127.0.0.1:8080", False, False),       # another local app's page
    ("http://evil.example:8080", "evil.example:8080", False, False),  # DNS rebinding to 127.0.0.1
    ("http://evil.example:8080", "evil.example:8080", True, True),    # remote mode: same origin (secret still needed)
    ("http://evil.example", "server:8080", True, False),
    (None, "127.0.0.1:8080", False, False),
    ("null", "127.0.0.1:8080", False, False),
    ("file://", "127.0.0.1:8080", False, False),
    ("http://127.0.0.1:8080/x", "127.0.0.1:8080", False, False),
    ("http://u@127.0.0.1:8080", "127.0.0.1:8080", False, False),
    ("http://127.0.0.1", "127.0.0.1:80", False, True),
])
def test_origin_must_be_the_pages_own_and_loopback(origin, host, remote, ok):
    assert security.origin_allowed(origin, host, allow_remote=remote) is ok


def test_non_loopback_bind_needs_allow_remote(tmp_path, capsys):
    from LiverCTSegmentationLib.web.app import main

    for host in ("127.0.0.1", "localhost", "::1"):
        security.check_bind(host, allow_remote=False)
    for host in ("0.0.0.0", "", "192.168.1.4", "::"):
        with pytest.raises(security.RemoteBindError, match="--allow-remote"):
            security.check_bind(host, allow_remote=False)
        security.check_bind(host, allow_remote=True)
    assert main(["--data-dir", str(tmp_path), "--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err
    assert "--allow-remote" in err and "SSH tunnel" in err


def test_secrets_are_random_per_launch():
    a, b = security.new_secret(), security.new_secret()
    assert a != b and len(a) >= 40 and PUBLIC_DEFAULT_SECRET not in (a, b)


def test_ct_list_leaves_out_saved_results(tmp_path):
    for name in ("ct.nii.gz", "b.nrrd", "out.seg.nrrd", "out.nii.gz", "ct_liverseg.nii.gz",
                 "case7_label.nii.gz", "case7_label.nrrd", "Edited.SEG.NRRD", "edited.nii"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "case7").mkdir()
    (tmp_path / "case7" / "case7.seg.nrrd").write_bytes(b"x")
    (tmp_path / "case7" / "case7_label.nii.gz").write_bytes(b"x")
    (tmp_path / "case7" / "scan.nii.gz").write_bytes(b"x")
    assert DataFolder(tmp_path).list_cts() == ["b.nrrd", "ct.nii.gz", "case7/scan.nii.gz"]


def test_capped_unchunker_keeps_the_limit_after_authentication():
    _need_web_extra()
    import msgpack
    from wslink.chunking import generate_chunks

    un = security.capped_unchunker(4000)
    big = next(generate_chunks(msgpack.packb(b"x" * 1000), 100))
    with pytest.raises(ValueError):  # before authentication: wslink's own 512-byte limit
        un.process_chunk(big)
    un.set_max_message_size(4 * 1024**3)  # what wslink does after a good hello
    assert un.max_message_size == 4000
    assert un.process_chunk(next(generate_chunks(msgpack.packb(b"y" * 100), 0))) == b"y" * 100
    first = next(generate_chunks(msgpack.packb(b"a" * 2500), 1000))
    second = next(generate_chunks(msgpack.packb(b"b" * 2500), 1000))
    assert un.process_chunk(first) is None  # 2.5 kB pending: fine alone
    with pytest.raises(security.MessageTooLargeError):  # interleaved messages count together
        un.process_chunk(second)
    with pytest.raises(security.MessageTooLargeError):
        un.process_chunk(next(generate_chunks(msgpack.packb(b"c" * 5000), 1000)))


# ------------------------------------------------------------------ the live server
@pytest.fixture(scope="module")
def server(tmp_path_factory):
    _need_web_extra()
    from bundle_fixtures import make_box_bundle

    from LiverCTSegmentationLib.engine import io
    from LiverCTSegmentationLib.synthetic.phantom import make_phantom

    tmp = tmp_path_factory.mktemp("websec")
    data = tmp / "data"
    data.mkdir()
    ct, lab = make_phantom(2, shape_kji=(8, 24, 24), orientation="LPS", fov="full", n_lesions=0)
    io.write_volume(ct, data / "patient_ct.nii.gz")
    io.write_volume(lab, data / "patient_ct_liverseg.nii.gz")  # what the page's Save writes by default
    io.write_volume(lab, data / "review.nii.gz")
    (data / "review.seg.nrrd").write_bytes(b"x")
    bundle = make_box_bundle(tmp / "bundle", liver_hu=(100.0, 175.0), two_stage=False)
    port = free_port()
    env = dict(os.environ, OMP_NUM_THREADS="1", VTK_DEFAULT_OPENGL_WINDOW="vtkEGLRenderWindow",
               PYTHONPATH=os.pathsep.join([str(ROOT / "LiverCTSegmentation"), os.environ.get("PYTHONPATH", "")]))
    log_path = tmp / "server.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "LiverCTSegmentationLib.web.app", "--data-dir", str(data),
                                 "--model", str(bundle), "--port", str(port), "--max-upload-mb", str(MAX_UPLOAD_MB)],
                                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp)
    try:
        deadline = time.time() + 90
        while not (m := re.search(rf"http://127\.0\.0\.1:{port}/\?secret=([A-Za-z0-9_-]+)", log_path.read_text())):
            if proc.poll() is not None or time.time() > deadline:
                pytest.fail("web server did not print its URL:\n" + log_path.read_text()[-3000:])
            time.sleep(0.3)
        yield {"port": port, "secret": m.group(1), "log": log_path}
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def _packed(rpc_id: str, method: str, args: list) -> list[bytes]:
    import msgpack
    from wslink.chunking import generate_chunks

    return list(generate_chunks(msgpack.packb({"wslink": "1.0", "id": rpc_id, "method": method, "args": args,
                                              "kwargs": {}}), 64 * 1024))


async def _reply(ws, rpc_id: str) -> dict:
    """The next complete message answering ``rpc_id`` (state pushes in between are skipped)."""
    import aiohttp
    from wslink.chunking import UnChunker

    un = UnChunker()
    un.set_max_message_size(1 << 30)
    while True:
        msg = await asyncio.wait_for(ws.receive(), 20)
        assert msg.type == aiohttp.WSMsgType.BINARY, f"connection ended: {msg.type} {msg.data} {msg.extra}"
        full = un.process_chunk(msg.data)
        if full is not None and full.get("id") == rpc_id:
            return full


async def _call(ws, rpc_id: str, method: str, args: list) -> dict:
    for chunk in _packed(rpc_id, method, args):
        await ws.send_bytes(chunk)
    return await _reply(ws, rpc_id)


async def _connect(server, origin, extra_headers=None):
    import aiohttp

    session = aiohttp.ClientSession()
    headers = dict(extra_headers or {})
    if origin is not None:
        headers["Origin"] = origin
    try:
        ws = await session.ws_connect(f"ws://127.0.0.1:{server['port']}/ws", headers=headers, autoclose=False)
    except BaseException:
        await session.close()
        raise
    return session, ws


def _own_origin(server) -> str:
    return f"http://127.0.0.1:{server['port']}"


@pytest.mark.parametrize("origin, extra", [
    ("https://evil.example", {}),
    ("http://localhost:1", {}),
    (None, {}),
    ("http://evil.example:{port}", {"Host": "evil.example:{port}"}),  # DNS rebinding
])
def test_foreign_origin_is_refused_at_the_upgrade(server, origin, extra):
    import aiohttp

    port = server["port"]
    origin = origin.format(port=port) if origin else None
    extra = {k: v.format(port=port) for k, v in extra.items()}

    async def go() -> int:
        with pytest.raises(aiohttp.WSServerHandshakeError) as e:
            session, ws = await _connect(server, origin, extra)
            await ws.close()
            await session.close()
        return e.value.status

    assert asyncio.run(go()) == 403


def test_wrong_secret_reaches_no_rpc(server):
    async def go() -> tuple[dict, dict]:
        session, ws = await _connect(server, _own_origin(server))
        try:
            hello = await _call(ws, "system:c0:0", "wslink.hello", [{"secret": PUBLIC_DEFAULT_SECRET}])
            state = await _call(ws, "rpc:c0:1", "trame.state.get", [])
            return hello, state
        finally:
            await ws.close()
            await session.close()

    hello, state = asyncio.run(go())
    assert "error" in hello and "result" not in hello
    assert "error" in state and "result" not in state and "Unauthorized" in state["error"]["message"]


def _authenticated(server):
    """(session, ws, client id) after a good hello with the printed secret."""
    async def go():
        session, ws = await _connect(server, _own_origin(server))
        hello = await _call(ws, "system:c0:0", "wslink.hello", [{"secret": server["secret"]}])
        assert "result" in hello, hello
        return session, ws, hello["result"]["clientID"]
    return go()


def _state_with_printed_secret(server) -> dict:
    async def go() -> dict:
        session, ws, cid = await _authenticated(server)
        try:
            return await _call(ws, f"rpc:{cid}:1", "trame.state.get", [])
        finally:
            await ws.close()
            await session.close()

    return asyncio.run(go())


def test_right_origin_and_secret_work_and_list_only_cts(server):
    reply = _state_with_printed_secret(server)
    assert "result" in reply, reply
    assert reply["result"]["state"]["lw_files"] == ["patient_ct.nii.gz"]


def test_oversized_message_closes_the_connection(server):
    import aiohttp
    from wslink.chunking import _encode_header

    limit = security.max_message_bytes(MAX_UPLOAD_MB * 1024 * 1024)

    async def go():
        session, ws, _ = await _authenticated(server)
        try:
            # wslink trusts the announced total and allocates it at once; 4 GB were accepted before.
            await ws.send_bytes(_encode_header(7, 0, limit + 1) + b"\0" * 1024)
            msg = await asyncio.wait_for(ws.receive(), 20)
            return msg.type, ws.close_code
        finally:
            await ws.close()
            await session.close()

    kind, code = asyncio.run(go())
    assert kind in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING)
    assert code == aiohttp.WSCloseCode.MESSAGE_TOO_BIG
    assert "result" in _state_with_printed_secret(server)  # still serving well-behaved clients

