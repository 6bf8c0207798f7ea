"""engine/heap.py: a one-shot ``liverseg`` process keeps freed memory for its next stage; a long-lived
process (tests, Slicer, the web app) still gives it back after each network pass."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt/malloc_trim")

# Free a 256 MB array (one mmap by default), trim as the engine does after a network pass, and
# report how much of it is still resident.
_PROBE = """
import json, sys, numpy as np, psutil
from LiverCTSegmentationLib.engine import heap
applied = heap.keep_freed_memory() if sys.argv[1] == "keep" else False
rss = lambda: psutil.Process().memory_info().rss / 2**20
before = rss()
a = np.ones(256 << 20, np.uint8)
del a
heap.release_free_memory()
print(json.dumps({"applied": applied, "kept_mb": rss() - before}))
"""


def _probe(mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, timeout=120,
                         env=dict(os.environ))
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_kept_memory_stays_resident_for_reuse_and_default_gives_it_back():
    kept, default = _probe("keep"), _probe("default")
    assert kept["applied"] is True
    assert kept["kept_mb"] > 200, kept  # the freed 256 MB stayed in the heap (no mmap, no trim)
    assert default["kept_mb"] < 50, default  # its own mmap, returned on free


_CLI = """
import json, sys
from LiverCTSegmentationLib.batch import cli
from LiverCTSegmentationLib.engine import heap
if sys.argv[1] == "console":
    sys.argv = ["liverseg", "--version"]
    rc = cli.main()  # as the console script calls it
else:
    rc = cli.main(["--version"])  # as tests and other Python code call it
print(json.dumps({"rc": rc, "keeps": heap.keeps_freed_memory()}))
"""


@pytest.mark.parametrize("how,keeps", [("console", True), ("in-process", False)])
def test_only_the_command_line_process_keeps_freed_memory(how, keeps):
    out = subprocess.run([sys.executable, "-c", _CLI, how], capture_output=True, text=True, timeout=120,
                         env=dict(os.environ))
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got == {"rc": 0, "keeps": keeps}


_WORKER = """
import json, sys
from LiverCTSegmentationLib.slicerui import worker
from LiverCTSegmentationLib.engine import heap
if sys.argv[1] == "one-shot":  # a missing input: the job fails with a message, after the policy is set
    rc = worker.main(["--input", sys.argv[2] + "/absent.nrrd", "--output-dir", sys.argv[2]])
else:  # a kept worker whose control folder is gone ends at once
    rc = worker.main(["--serve", sys.argv[2] + "/gone", "--idle-seconds", "0"])
print(json.dumps({"rc": rc, "keeps": heap.keeps_freed_memory()}))
"""


@pytest.mark.parametrize("how,rc,keeps", [("one-shot", 2, True), ("serve", 0, False)])
def test_slicer_one_shot_worker_keeps_freed_memory_and_the_kept_worker_trims(tmp_path, how, rc, keeps):
    out = subprocess.run([sys.executable, "-c", _WORKER, how, str(tmp_path)], capture_output=True, text=True,
                         timeout=120, env=dict(os.environ))
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got == {"rc": rc, "keeps": keeps}
