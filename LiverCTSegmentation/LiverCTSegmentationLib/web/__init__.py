"""Browser front end (issue 8): review and edit segmentations on Slicer's core via trame-slicer.

``safe_paths``, ``uploads``, ``stats_panel``, ``saving`` and ``run_guard`` are
plain Python (no Slicer, no trame) so the path-safety and save rules are
testable everywhere; ``scene_glue`` needs slicer-core; ``app`` needs the
``web`` extra (trame-slicer).
"""
