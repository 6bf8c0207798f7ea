"""``liverseg-web``: review and edit liver / tumour segmentations in the browser.

Built on trame-slicer (Slicer's MRML scene, slice/3D views and Segment Editor
effects rendered on the server). One process holds one scene: this is a
single-user app; run one process (one port) per user.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import threading
from pathlib import Path
from typing import Any, Optional

from ..engine.errors import InputError, LiverSegError
from .run_guard import SceneIdentity, StaleResultError, refuse_while_busy
from .safe_paths import DataFolder
from .saving import write_outputs
from .security import check_bind, harden, is_loopback, max_message_bytes, new_secret
from .stats_panel import empty_stats, stats_view
from .uploads import DEFAULT_MAX_UPLOAD_MB, UploadStore

log = logging.getLogger("liverseg.web")

LOOPBACK = "127.0.0.1"
DEVICES = ("auto", "cpu", "cuda", "mps")


class LiverWebApp:
    """trame-slicer app with our own panel: open CT, run the model, statistics, save."""

    def __init__(self, server=None, *, data_dir: str | os.PathLike, model: Optional[str] = None,
                 max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB, device: str = "auto",
                 allow_remote: bool = False) -> None:
        from trame.app import get_server
        from trame_slicer import module as trame_slicer_module
        from trame_slicer.app.logic import LayoutButtonLogic, MprInteractionButtonLogic, VolumePropertyLogic
        from trame_slicer.app.logic.segmentation import SegmentEditorLogic
        from trame_slicer.core import SlicerApp
        from trame_slicer.rca_view import register_rca_factories

        self.server = server or get_server(None, client_type="vue3")
        self.server.enable_module(trame_slicer_module)
        self.data = DataFolder(data_dir)
        self.uploads = UploadStore(int(max_upload_mb * 1024 * 1024))
        self.model_arg = model
        self.device = device
        self.allow_remote = allow_remote
        self.secret = new_secret()  # per launch; only the printed URL carries it to the browser
        self.slicer_app = SlicerApp()
        register_rca_factories(self.slicer_app.view_manager, self.server)
        self.editor_logic = SegmentEditorLogic(self.server, self.slicer_app)
        self.volume_property_logic = VolumePropertyLogic(self.server, self.slicer_app)
        self.layout_button_logic = LayoutButtonLogic(self.server, self.slicer_app)
        self.mpr_logic = MprInteractionButtonLogic(self.server, self.slicer_app)

        self.ct = None            # engine Volume of the open CT
        self.volume_node = None
        self.segmentation_node = None
        self._bundle = None
        self._labels: list[dict] = []
        self._progress = (0.0, "")
        # The server's own busy flag: lw_busy is client-writable state, so it only mirrors this one.
        self._busy = False
        self._upload_path: Optional[Path] = None  # the open CT's upload, removed when another CT replaces it
        self._stats_handle: Optional[asyncio.TimerHandle] = None

        s = self.state
        s.trame__title = "LiverCT Segmentation (web)"
        s.lw_files = self.data.list_cts()
        s.lw_selected = None
        s.lw_ct_name = ""
        s.lw_busy = False
        s.lw_progress = 0
        s.lw_stage = ""
        s.lw_error = ""
        s.lw_message = f"Data folder: {self.data.root}"
        s.lw_stats = empty_stats()
        s.lw_stats_version = 0
        s.lw_out_name = ""
        s.lw_saved = []
        s.lw_max_upload = self.uploads.max_bytes
        s.lw_upload = None

        from .ui import build_ui

        self.ui = build_ui(self)
        self.layout_button_logic.set_ui(self.ui.layout_button)
        self.mpr_logic.set_ui(self.ui.mpr_interaction_button)
        self.editor_logic.set_ui(self.ui.segment_editor)
        self.volume_property_logic.set_ui(self.ui.volume_property)
        self.slicer_app.segmentation_editor.segmentation_modified.connect(self._schedule_stats)
        self.state.change("lw_upload")(self._on_upload)
        ctrl = self.server.controller
        ctrl.lw_open = self.open_selected
        ctrl.lw_refresh = self.refresh_files
        ctrl.lw_run = self.run_segmentation
        ctrl.lw_save = self.save_result
        ctrl.on_server_bind.add(self._protect)

    @property
    def state(self):
        return self.server.state

    # ------------------------------------------------------------------ messages
    def _fail(self, e: Exception) -> None:
        if isinstance(e, LiverSegError):
            self.state.lw_error = str(e)
        else:  # a bug: keep serving, say so, log the details for the operator
            log.exception("unexpected error")
            self.state.lw_error = f"Unexpected error ({type(e).__name__}: {e}). The server keeps running; see its log."

    def _ok(self, msg: str) -> None:
        self.state.lw_error = ""
        self.state.lw_message = msg

    # ------------------------------------------------------------------ open
    def refresh_files(self) -> None:
        self.state.lw_files = self.data.list_cts()

    def open_selected(self) -> None:
        try:
            self.open_ct(self.data.input_path(self.state.lw_selected or ""), self.state.lw_selected)
        except Exception as e:  # noqa: BLE001 - every failure becomes a message in the page
            self._fail(e)

    def _on_upload(self, lw_upload=None, **_: Any) -> None:
        if not lw_upload:
            return
        path = None
        name = str(lw_upload.get("name") or "upload")
        try:
            refuse_while_busy(self._busy, "uploading another CT")  # before anything is written
            from trame.app.file_upload import ClientFile

            f = ClientFile(lw_upload)
            self.uploads.check_size(name, int(lw_upload.get("size") or 0) or len(f.content or b""))
            path = self.uploads.save(name, f.content)
            self.open_ct(path, name)
        except Exception as e:  # noqa: BLE001
            self._fail(e)
            if path is not None and path != self._upload_path:
                self.uploads.discard(path)
                # Show the user's own file name, not the private temp path.
                self.state.lw_error = self.state.lw_error.replace(str(path), name)
        finally:
            self.state.lw_upload = None

    def open_ct(self, path: Path, display_name: str) -> None:
        """Read with the engine (same checks as the CLI), then rebuild the scene around it."""
        from ..engine import checks, io
        from ..slicerui import mrml_convert
        from . import scene_glue

        refuse_while_busy(self._busy, "opening another CT")
        vol = io.read_volume(path)
        warnings = checks.check_volume(vol)
        sa = self.slicer_app
        sa.segmentation_editor.deactivate_effect()
        sa.scene.Clear()  # without it the editor effects lose their paint widget (trame-slicer quirk)
        self.ct = vol
        stem = Path(display_name).name
        for s in (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd"):
            if stem.lower().endswith(s):
                stem = stem[: -len(s)]
                break
        self.volume_node = scene_glue.add_volume_node(sa.scene, vol, stem or "CT")
        self.segmentation_node = sa.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", f"{stem} segmentation")
        self._labels = self._default_labels()
        # Empty "Liver" / "Liver tumor" segments with our names, colours and terminology: editable at once.
        mrml_convert.import_labelmap(vol.with_array(vol.array.astype("uint8") * 0), self.segmentation_node,
                                     self.volume_node, self._labels)
        # Slices only: CPU volume rendering of a full CT would slow every 3D redraw; the 3D view
        # shows the segment surfaces instead.
        sa.display_manager.show_volume_in_slice_background(self.volume_node)
        sa.display_manager.show_volume_in_slice_foreground(None)
        sa.display_manager.reset_views()
        self.editor_logic.on_volume_changed(self.volume_node)
        self._select_segment("Liver")
        lay = self.ui.layout.typed_state.data
        lay.is_volume_loaded = True
        lay.is_drawer_visible = True
        lay.active_tool = "SegmentEditorUI"
        self.state.lw_ct_name = display_name
        self.state.lw_out_name = f"{stem}_liverseg"
        self.state.lw_saved = []
        self._forget_previous_upload(path)
        self.update_stats()
        self._ok(f"Opened {display_name}." + (" Warnings: " + " ".join(warnings) if warnings else ""))

    def _forget_previous_upload(self, opened: Path) -> None:
        """Keep at most the open CT's upload on disk: the scene holds the image in memory."""
        previous, self._upload_path = self._upload_path, (Path(opened) if self.uploads.owns(opened) else None)
        if previous is not None and previous != self._upload_path:
            self.uploads.discard(previous)

    def _default_labels(self) -> list[dict]:
        try:
            return list(self._load_bundle().labels)
        except LiverSegError:
            pass  # no model yet: still allow manual segmentation with our standard labels
        return [
            {"value": 1, "name": "Liver", "color": [221, 130, 101],
             "terminology": {"category": ["SCT", "123037004", "Anatomical Structure"],
                             "type": ["SCT", "10200004", "Liver"]}},
            {"value": 2, "name": "Liver tumor", "color": [144, 238, 144],
             "terminology": {"category": ["SCT", "49755003", "Morphologically Altered Structure"],
                             "type": ["SCT", "108369006", "Neoplasm"], "region": ["SCT", "10200004", "Liver"]}},
        ]

    def _select_segment(self, name: str) -> None:
        ed = self.slicer_app.segmentation_editor
        for sid, props in ed.get_all_segment_properties().items():
            if props.name == name:
                ed.set_active_segment_id(sid)
                return

    # ------------------------------------------------------------------ model
    def _load_bundle(self):
        if self._bundle is None:
            from .. import models
            from ..engine.bundle import ModelBundle

            self._bundle = ModelBundle.load(models.resolve_model(self.model_arg))
        return self._bundle

    async def run_segmentation(self) -> None:
        if self.ct is None:
            self.state.lw_error = "Open a CT first (pick one from the data folder or upload a file)."
            return
        if self._busy:
            return
        from ..engine import pipeline
        from ..engine.progress import Progress

        # Taken before the first await: open/upload/save are refused from here on.
        self._busy, self._progress = True, (0.0, "")
        ct, started_for = self.ct, SceneIdentity.of(self)
        try:
            self.state.lw_busy, self.state.lw_progress, self.state.lw_stage, self.state.lw_error = True, 0, "", ""
            self.state.flush()
            bundle = self._load_bundle()

            def on_progress(fraction: float, stage: str) -> None:
                self._progress = (fraction, stage)  # read by the loop below (no state access off-thread)

            def work():
                return pipeline.segment(ct, bundle, pipeline.SegmentOptions(device=self.device),
                                        progress=Progress(on_progress, threading.Event()))

            fut = asyncio.get_running_loop().run_in_executor(None, work)
            while not fut.done():
                await asyncio.sleep(0.25)
                with self.state:
                    self.state.lw_progress = round(100 * self._progress[0])
                    self.state.lw_stage = self._progress[1]
            result = fut.result()
            if not started_for.still_current(self):
                raise StaleResultError("The CT changed while the segmentation was running, so its result was "
                                       "discarded. Press Run segmentation again for the CT now open.")
            self._show_result(result, bundle)
        except Exception as e:  # noqa: BLE001
            self._fail(e)
        finally:
            self._busy = False
            with self.state:
                self.state.lw_busy = False
                self.state.lw_progress = 100 if not self.state.lw_error else 0

    def _show_result(self, result, bundle) -> None:
        from ..slicerui import mrml_convert

        self._labels = list(bundle.labels)
        from . import scene_glue

        self.slicer_app.segmentation_editor.deactivate_effect()
        scene_glue.remove_unedited_segments(self.segmentation_node, self.volume_node)
        mrml_convert.import_labelmap(result.labelmap, self.segmentation_node, self.volume_node, self._labels,
                                     model_name=f"{bundle.name} {bundle.version}")
        self.editor_logic.on_volume_changed(self.volume_node)
        # The editor's state is the source of truth for "show 3D": set it there, not only on the editor.
        self.editor_logic.data.segment_display.show_3d = True
        self.slicer_app.segmentation_editor.set_surface_representation_enabled(True)
        for view in self.slicer_app.view_manager.get_threed_views():
            view.reset_view()  # the camera was fitted to an empty scene when the CT opened
        self._select_segment("Liver")
        self.update_stats()
        demo = " (demo model: not for clinical use)" if getattr(bundle, "demo", False) else ""
        self._ok(f"Segmented with {bundle.name} {bundle.version}{demo}. Review and edit, then save."
                 + (" Warnings: " + " ".join(result.warnings) if result.warnings else ""))

    # ------------------------------------------------------------------ statistics
    def current_labelmap(self):
        from . import scene_glue

        return scene_glue.labelmap_from_segmentation(self.segmentation_node, self.volume_node, self.ct)

    def update_stats(self) -> None:
        self._stats_handle = None
        if self.ct is None or self.segmentation_node is None:
            return
        try:
            with self.state:
                self.state.lw_stats = stats_view(self.current_labelmap(), ct=self.ct)
                self.state.lw_stats_version += 1
        except Exception as e:  # noqa: BLE001
            self._fail(e)

    def _schedule_stats(self, *_: Any) -> None:
        """Edits fire many modified events; recompute once they settle."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        if self._stats_handle is not None:
            self._stats_handle.cancel()
        self._stats_handle = loop.call_later(0.4, self.update_stats)

    # ------------------------------------------------------------------ save
    def save_result(self) -> None:
        try:
            refuse_while_busy(self._busy, "saving")
            if self.ct is None:
                raise InputError("Nothing to save yet: open a CT first.")
            out = self.data.output_paths(self.state.lw_out_name)
            written = write_outputs(self.current_labelmap(), self._labels, out)
            rel = [str(p.relative_to(self.data.root)) for p in written]
            self.state.lw_saved = rel
            self._ok("Saved " + " and ".join(rel) + " in the data folder.")
        except Exception as e:  # noqa: BLE001
            self._fail(e)

    # ------------------------------------------------------------------ run
    def _protect(self, ws_server) -> None:
        """trame's server-bind hook: our secret, the Origin check and the message cap, before serving."""
        protocol = self.server.protocol
        protocol.updateSecret(self.secret)  # replaces trame's public default "wslink-secret"
        if getattr(protocol, "secret", None) != self.secret:
            raise RuntimeError("liverseg-web: could not set the connection secret; refusing to start.")
        harden(ws_server, cap=max_message_bytes(self.uploads.max_bytes), allow_remote=self.allow_remote)

    def url(self, host: str, port: int) -> str:
        """The address to open, secret included (the page removes it from the address bar)."""
        if host in ("", "0.0.0.0", "::"):
            import socket

            host = socket.gethostname()
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"http://{host}:{port}/?secret={self.secret}"

    def _print_url(self, host: str) -> None:
        print(f"\nliverseg-web running. Open (this URL holds the session's secret; keep it private):\n"
              f"  {self.url(host, self.server.port)}\n", flush=True)

    def start(self, host: str = LOOPBACK, port: int = 8080, open_path: Optional[str] = None) -> None:
        check_bind(host, self.allow_remote)
        if open_path:
            try:
                self.open_ct(self.data.input_path(open_path), open_path)
            except Exception as e:  # noqa: BLE001
                self._fail(e)
        self.server.controller.on_server_ready.add(lambda **_: self._print_url(host))
        try:
            # trame's own banner would print the URL without the secret.
            self.server.start(host=host, port=port, open_browser=False, show_connection_info=False)
        finally:
            self.uploads.cleanup()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="liverseg-web", description=(
        "Browser app to run, review and edit liver / liver-tumour segmentations (single user per process)."))
    p.add_argument("ct", nargs="?", help="CT to open at start, relative to --data-dir (or a path inside it)")
    p.add_argument("--data-dir", help="folder the app may read CTs from and save results to "
                                      "(default: the CT's folder, else the current folder)")
    p.add_argument("--model", default=None, help="model name, bundle folder or .zip (default: bundled model)")
    p.add_argument("--host", default=LOOPBACK, help="interface to listen on (default 127.0.0.1, loopback only; "
                                                    "any other needs --allow-remote)")
    p.add_argument("--allow-remote", action="store_true",
                   help="allow a non-loopback --host; clients still need the secret in the printed URL, "
                        "sent unencrypted over HTTP (prefer an SSH tunnel)")
    p.add_argument("--port", type=int, default=8080, help="port (default 8080; 0 picks a free one)")
    p.add_argument("--max-upload-mb", type=float, default=DEFAULT_MAX_UPLOAD_MB, help="upload size limit")
    p.add_argument("--device", choices=DEVICES, default="auto",
                   help="where the model runs (default auto: a GPU if one is usable, else the CPU; like liverseg)")
    return p


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")  # headless: skip the X attempt
    data_dir = args.data_dir
    open_rel = args.ct
    if args.ct and not data_dir:
        ct = Path(args.ct).expanduser().resolve()
        data_dir, open_rel = str(ct.parent), ct.name
    elif args.ct and Path(args.ct).is_absolute():
        try:
            open_rel = str(Path(args.ct).resolve().relative_to(Path(data_dir).expanduser().resolve()))
        except ValueError:
            print(f"liverseg-web: '{args.ct}' is not inside the data folder '{data_dir}'.", file=sys.stderr)
            return 2
    try:
        check_bind(args.host, args.allow_remote)
    except LiverSegError as e:
        print(f"liverseg-web: {e}", file=sys.stderr)
        return 2
    if not is_loopback(args.host):
        print(f"liverseg-web: WARNING: listening on {args.host}: the secret in the printed URL is the only "
              "protection, and plain HTTP sends it unencrypted. Prefer an SSH tunnel to 127.0.0.1.", file=sys.stderr)
    try:
        app = LiverWebApp(data_dir=data_dir or os.getcwd(), model=args.model, max_upload_mb=args.max_upload_mb,
                          device=args.device, allow_remote=args.allow_remote)
    except LiverSegError as e:
        print(f"liverseg-web: {e}", file=sys.stderr)
        return 2
    # trame parses sys.argv itself; hide our options from it.
    sys.argv = sys.argv[:1]
    app.start(host=args.host, port=args.port, open_path=open_rel)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
