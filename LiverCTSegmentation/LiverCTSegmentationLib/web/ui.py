"""Page layout: trame-slicer's viewer + segment editor, plus our review panel on the right.

Everything the tests look for carries a ``data-testid``.
"""
from __future__ import annotations

from types import SimpleNamespace
from typing import Any


def tid(name: str) -> dict:
    """``data-testid`` attribute (trame drops unknown keyword attributes, so pass it raw)."""
    return {"raw_attrs": [f'data-testid="{name}"']}


def build_ui(app: Any) -> SimpleNamespace:
    from trame.widgets import html
    from trame.widgets.vuetify3 import (VAlert, VBtn, VCard, VCardText, VCardTitle, VDivider, VFileInput,
                                        VNavigationDrawer, VProgressLinear, VSelect, VTable, VTextField)
    from trame_slicer.app.ui import (ControlButton, LayoutButton, MprInteractionButton, SegmentEditorToolbarUI,
                                     SegmentEditorUI, SegmentEditorUndoRedoUI, ViewerLayout, VolumePropertyUI)

    server = app.server
    ns = SimpleNamespace()
    with ViewerLayout(server, title="LiverCT Segmentation") as layout:
        ns.layout = layout
        layout.title.set_text("LiverCT Segmentation - review and edit")
        st = layout.typed_state.name

        def tool_active(name: str) -> str:
            return f"{st.active_tool} === '{name}'"

        with layout.drawer:
            ns.segment_editor = SegmentEditorUI(v_if=(tool_active("SegmentEditorUI"),))
            ns.volume_property = VolumePropertyUI(v_if=(tool_active("VolumePropertyUI"),))

        def toggle(name: str):
            def _f() -> None:
                d = layout.typed_state.data
                visible = not d.is_drawer_visible or d.active_tool != name
                d.is_drawer_visible = visible
                d.active_tool = name if visible else None
            return _f

        with layout.toolbar:
            ControlButton(icon="mdi-tune-variant", name="Volume properties", click=toggle("VolumePropertyUI"),
                          disabled=(f"!{st.is_volume_loaded}",), classes="mt-1")
            ns.layout_button = LayoutButton(classes="mt-1", disabled=(f"!{st.is_volume_loaded}",))
            ns.mpr_interaction_button = MprInteractionButton(classes="mt-1", disabled=(f"!{st.is_volume_loaded}",))
            ControlButton(icon="mdi-brush", name="Segment editor", click=toggle("SegmentEditorUI"),
                          disabled=(f"!{st.is_volume_loaded}",), classes="mt-1")
            SegmentEditorToolbarUI(editor_ui=ns.segment_editor)
        with layout.undo_redo:
            SegmentEditorUndoRedoUI(editor_ui=ns.segment_editor, v_if=(tool_active("SegmentEditorUI"),))

        with layout.content:
            app.layout_button_logic.layout_manager.initialize_layout_grid(layout)

        with layout:
            with VNavigationDrawer(location="right", permanent=True, width=330, **tid("lw-panel")):
                _review_panel(app, html, VAlert, VBtn, VCard, VCardText, VCardTitle, VDivider, VFileInput,
                              VProgressLinear, VSelect, VTable, VTextField)
    return ns


def _review_panel(app, html, VAlert, VBtn, VCard, VCardText, VCardTitle, VDivider, VFileInput,
                  VProgressLinear, VSelect, VTable, VTextField) -> None:
    limit = app.uploads.max_bytes
    with VCard(flat=True):
        VCardTitle("1. Open a CT", classes="text-subtitle-1")
        with VCardText():
            VSelect(label="From the data folder", items=("lw_files",), v_model=("lw_selected",),
                    density="compact", hide_details=True, **tid("lw-file-select"))
            with html.Div(classes="d-flex mt-2"):
                VBtn("Open", click=app.server.controller.lw_open, disabled=("!lw_selected || lw_busy",),
                     size="small", color="primary", **tid("lw-open"))
                VBtn("Refresh list", click=app.server.controller.lw_refresh, size="small", variant="text")
            # The size check runs in the browser first so an oversized file is never sent.
            VFileInput(label=f"...or upload (max {limit / 2**20:.0f} MB)", density="compact", hide_details=True,
                       classes="mt-3", accept=".nii,.nii.gz,.gz,.nrrd,.mha", show_size=True,
                       disabled=("lw_busy",), model_value=None,
                       update_modelValue=(
                           f"f = Array.isArray($event) ? $event[0] : $event; "
                           f"if (f && f.size > {limit}) {{ lw_error = 'File ' + f.name + ' is larger than the "
                           f"upload limit ({limit / 2**20:.0f} MB). Put it in the data folder instead.' }} "
                           f"else if (f) {{ lw_upload = f }}"),
                       **tid("lw-upload"))
            html.Div("{{ lw_ct_name ? 'Open: ' + lw_ct_name : 'No CT open' }}", classes="text-caption mt-2",
                     **tid("lw-ct-name"))
        VDivider()
        VCardTitle("2. Segment", classes="text-subtitle-1")
        with VCardText():
            VBtn("Run segmentation", click=app.server.controller.lw_run, disabled=("lw_busy || !lw_ct_name",),
                 color="primary", size="small", block=True, **tid("lw-run"))
            VProgressLinear(model_value=("lw_progress",), v_show=("lw_busy",), height=14, color="green",
                            classes="mt-2", **tid("lw-progress"))
            html.Div("{{ lw_busy ? (lw_stage || 'starting') + ' ' + lw_progress + '%' : '' }}",
                     classes="text-caption", **tid("lw-stage"))
        VDivider()
        VCardTitle("3. Review (updates after edits)", classes="text-subtitle-1")
        with VCardText(**tid("lw-stats")):
            with VTable(density="compact"):
                with html.Tbody():
                    for label, expr, test_id in (("Liver volume (mL)", "lw_stats.liver_ml", "lw-liver-ml"),
                                             ("Lesions", "lw_stats.tumor_count", "lw-tumor-count"),
                                             ("Tumour volume (mL)", "lw_stats.tumor_ml", "lw-tumor-ml"),
                                             ("Tumour burden (%)", "lw_stats.burden_percent", "lw-burden")):
                        with html.Tr():
                            html.Td(label)
                            html.Td("{{ " + expr + " }}", **tid(test_id))
            with VTable(density="compact", v_if=("lw_stats.lesions.length",)):
                with html.Thead():
                    with html.Tr():
                        html.Th("#")
                        html.Th("mL")
                        html.Th("longest axial diameter (mm)")
                with html.Tbody():
                    with html.Tr(v_for="l in lw_stats.lesions", key="l.index"):
                        html.Td("{{ l.index }}")
                        html.Td("{{ l.volume_ml }}")
                        html.Td("{{ l.diameter_mm }}")
            html.Div("voxels: liver <span data-testid='lw-liver-voxels'>{{ lw_stats.liver_voxels }}</span>, "
                     "tumour <span data-testid='lw-tumor-voxels'>{{ lw_stats.tumor_voxels }}</span> "
                     "(update #<span data-testid='lw-stats-version'>{{ lw_stats_version }}</span>)",
                     classes="text-caption")
            # Plausibility warnings of the liver as it is now: they go away once an edit fixes the cause.
            with html.Div(v_if=("lw_stats.warnings && lw_stats.warnings.length",), **tid("lw-warnings")):
                VAlert(v_for="(w, n) in lw_stats.warnings", key="n", text=("w",), type="warning",
                       density="compact", classes="mt-2")
        VDivider()
        VCardTitle("4. Save", classes="text-subtitle-1")
        with VCardText():
            VTextField(label="Output name (in the data folder)", v_model=("lw_out_name",), density="compact",
                       hide_details=True, suffix=".seg.nrrd / .nii.gz", **tid("lw-out-name"))
            VBtn("Save", click=app.server.controller.lw_save, disabled=("lw_busy || !lw_ct_name",),
                 size="small", color="primary", classes="mt-2", **tid("lw-save"))
            html.Div("{{ lw_saved.join(', ') }}", classes="text-caption", **tid("lw-saved"))
        VAlert(text=("lw_error",), v_if=("lw_error",), type="error", density="compact", classes="ma-2",
               closable=True,
               raw_attrs=['data-testid="lw-error"', "@click:close=\"lw_error = ''\""])
        html.Div("{{ lw_message }}", classes="text-caption ma-2", **tid("lw-message"))
