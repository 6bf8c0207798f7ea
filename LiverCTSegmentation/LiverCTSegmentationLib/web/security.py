"""Who may drive the app: same-origin pages holding this launch's secret, with bounded messages.

Loopback binding alone does not protect a browser app: any web page the user
visits can open a WebSocket to ``ws://127.0.0.1:PORT/ws``, and trame's default
secret (``wslink-secret``) is public. So the app

* refuses a WebSocket upgrade whose ``Origin`` is not the page's own origin
  (loopback names only, unless ``--allow-remote``), which also stops DNS rebinding;
* authenticates with a random per-launch secret, handed to the browser only in
  the URL the app prints (trame's client reads ``?secret=`` and drops it from
  the address bar);
* caps every reassembled wslink message (wslink allows 4 GB once authenticated,
  and allocates a chunk header's claimed size before any content arrives);
* refuses to listen on a non-loopback interface without ``--allow-remote``.

``origin_allowed``, ``check_bind`` and ``new_secret`` are plain Python; ``harden``
patches a wslink aiohttp server and needs the ``web`` extra.
"""
from __future__ import annotations

import ipaddress
import logging
import secrets
from typing import Any, Optional
from urllib.parse import urlsplit

from ..engine.errors import InputError

log = logging.getLogger("liverseg.web")

# Room around an upload for the state-update envelope (file name, type, keys).
MESSAGE_OVERHEAD_BYTES = 1024 * 1024
_DEFAULT_PORTS = {"http": 80, "https": 443}


class RemoteBindError(InputError):
    """A non-loopback ``--host`` without ``--allow-remote``."""


class MessageTooLargeError(ValueError):
    """A client announced or sent a wslink message above the cap."""


def new_secret() -> str:
    """A fresh secret for one launch (256 bits, URL-safe)."""
    return secrets.token_urlsafe(32)


def is_loopback(host: Optional[str]) -> bool:
    """``localhost``, ``127.x.y.z`` or ``::1`` (brackets allowed); anything else is remote."""
    if not host:
        return False
    h = host.strip().lower().strip("[]")
    if h == "localhost" or h.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


def check_bind(host: str, allow_remote: bool) -> None:
    """Refuse a non-loopback interface unless the user asked for it explicitly."""
    if is_loopback(host) or allow_remote:
        return
    raise RemoteBindError(
        f"--host {host or '(all interfaces)'} would let other machines reach the app. Use an SSH tunnel to "
        "127.0.0.1 instead, or pass --allow-remote as well (clients then need the secret in the printed URL).")


def _host_port(scheme: str, netloc: str) -> Optional[tuple[str, int]]:
    try:
        parts = urlsplit(f"//{netloc}")
        port = parts.port or _DEFAULT_PORTS[scheme]
    except (ValueError, KeyError):
        return None
    if not parts.hostname or parts.username or parts.password:
        return None
    return parts.hostname.lower(), port


def origin_allowed(origin: Optional[str], host_header: Optional[str], *, allow_remote: bool = False) -> bool:
    """True when ``origin`` is the origin the request was sent to (its ``Host``).

    Without ``allow_remote`` that origin must also be a loopback name, so a
    rebinding domain pointing at 127.0.0.1 (``Host: evil.example:8080``) fails.
    A missing or ``null`` Origin fails: the page itself is always a browser,
    and browsers always send one on a WebSocket.
    """
    if not origin or not host_header:
        return False
    try:
        o = urlsplit(origin.strip())
    except ValueError:
        return False
    if o.scheme not in _DEFAULT_PORTS or o.path not in ("", "/") or o.query or o.fragment:
        return False
    mine = _host_port(o.scheme, o.netloc)
    if mine is None or mine != _host_port(o.scheme, host_header.strip()):
        return False
    return allow_remote or is_loopback(mine[0])


def max_message_bytes(max_upload_bytes: int) -> int:
    """The largest wslink message the app accepts: one upload plus its envelope."""
    return int(max_upload_bytes) + MESSAGE_OVERHEAD_BYTES


def capped_unchunker(cap: int) -> Any:
    """A wslink ``UnChunker`` that never accepts more than ``cap`` bytes pending in total.

    wslink raises its own limit to 4 GB after authentication and allocates a
    chunk header's claimed size at once; this keeps the pre-auth limit (512 B)
    and caps the rest, across interleaved messages too.
    """
    from wslink.chunking import HEADER_LENGTH, UnChunker, _decode_header

    class CappedUnChunker(UnChunker):
        def set_max_message_size(self, size: int) -> None:
            super().set_max_message_size(min(int(size), cap))

        def process_chunk(self, chunk: bytes):
            msg_id, _offset, total = _decode_header(chunk[:HEADER_LENGTH])
            if msg_id not in self.pending_messages:
                pending = sum(len(p["content"]) for p in self.pending_messages.values())
                if pending + total > self.max_message_size:
                    self.release_pending_messages()
                    raise MessageTooLargeError(
                        f"message of {total} bytes (+{pending} pending) above the limit of {self.max_message_size}")
            return super().process_chunk(chunk)

    return CappedUnChunker()


def _is_websocket_upgrade(request: Any, ws_paths: set[str]) -> bool:
    return request.path in ws_paths or request.headers.get("Upgrade", "").lower() == "websocket"


def harden(ws_server: Any, *, cap: int, allow_remote: bool) -> None:
    """Install the Origin check and the message cap on a wslink aiohttp ``WebAppServer`` before it starts.

    Raises ``RuntimeError`` when wslink's internals moved: better not to start
    than to serve unprotected.
    """
    import aiohttp
    from aiohttp import web

    handlers = getattr(ws_server, "_ws_handlers", None)
    app = getattr(ws_server, "app", None)
    if not handlers or app is None or not all(hasattr(h, "unchunkers") for h in handlers):
        raise RuntimeError("liverseg-web: this wslink version is not supported (no WebSocket handler to "
                           "protect); install the versions in constraints.txt.")
    ws_paths = {r.resource.canonical for r in app.router.routes()
                if r.resource is not None and getattr(r.handler, "__self__", None) in handlers}

    @web.middleware
    async def check_origin(request, handler):
        if _is_websocket_upgrade(request, ws_paths) and not origin_allowed(
                request.headers.get("Origin"), request.headers.get("Host"), allow_remote=allow_remote):
            log.warning("refused a WebSocket from origin %r (host %r)", request.headers.get("Origin"),
                        request.headers.get("Host"))
            raise web.HTTPForbidden(text="Cross-origin connections to liverseg-web are refused.\n")
        return await handler(request)

    app.middlewares.append(check_origin)

    for h in handlers:
        _cap_handler(h, cap, aiohttp.WSCloseCode.MESSAGE_TOO_BIG)


def _cap_handler(handler: Any, cap: int, close_code: int) -> None:
    on_connect, on_message = handler.onConnect, handler.onMessage

    async def capped_connect(request, client_id):
        await on_connect(request, client_id)
        handler.unchunkers[client_id] = capped_unchunker(cap)

    async def capped_message(is_binary, msg, client_id):
        try:
            await on_message(is_binary, msg, client_id)
        except MessageTooLargeError as e:
            log.warning("closed a connection: %s", e)
            ws = handler.connections.get(client_id)
            if ws is not None:
                await ws.close(code=close_code, message=b"message too large")

    handler.onConnect, handler.onMessage = capped_connect, capped_message
