"""bench/bench_apply.py runs the real worker both ways (new process per Apply, kept worker) and prints a row
per Apply."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import bench_apply  # noqa: E402


def test_quick_run_prints_a_row_per_apply(tmp_path, capsys):
    assert bench_apply.main(["--quick", "--applies", "2", "--threads", "1", "--workdir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| Apply 1 " in out and "| Apply 2 " in out and "kept worker" in out
    assert not any(p.name.startswith("bench-apply") for p in Path(tmp_path).iterdir())
