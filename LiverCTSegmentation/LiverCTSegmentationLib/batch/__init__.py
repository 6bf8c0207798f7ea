"""The batch face: ``liverseg`` (``cli``) and the folder batch runner behind it (``run``).

Files and folders in, one output folder out: case discovery, per-case outputs, CSV report,
resume, locks, atomic writes, overlay pictures. Imports the engine and the model registry,
never another face. ``from LiverCTSegmentationLib import batch; batch.run_batch(...)`` keeps
working: the public names of ``run`` are re-exported here.
"""
from .run import (  # noqa: F401
    DONE_NAME, FOLDER_LOCK_NAME, LOCK_NAME, MANIFEST_VERSION, OUTPUT_KEYS, REPORT_COLUMNS, RESULT_NAME, STAGES,
    VOLUME_SUFFIXES, BatchOptions, BatchProgress, Case, CaseLocked, CaseResult, atomic_path, case_stem, check_done,
    claim_case, collect_results, discover_cases, folder_mutex, input_fingerprint, model_identity, output_paths,
    release_case, report_path, run_batch, sha256_file, write_bytes_atomic, write_json_atomic, write_report,
)
from .run import __all__  # noqa: F401
from .ray_run import run_batch_ray  # noqa: F401,E402 - Ray itself is imported only when it runs
