"""User-facing training errors: one line from `liverseg-train`, no traceback; config checks only trained stages."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("yaml")

from liverct_training import cli  # noqa: E402
from liverct_training.config import ConfigError, load_config  # noqa: E402
from LiverCTSegmentationLib.engine.errors import LiverSegError  # noqa: E402


def test_training_errors_are_liverseg_errors():
    from liverct_training.datasets import DatasetError
    from liverct_training.export import ExportError
    from liverct_training.labels import LabelError
    from liverct_training.prepare import PrepareError
    from liverct_training.split import SplitError

    for cls in (ConfigError, DatasetError, LabelError, SplitError, ExportError, PrepareError):
        assert issubclass(cls, LiverSegError), cls
    for cls in (DatasetError, LabelError, SplitError, ExportError, PrepareError):
        assert issubclass(cls, ValueError), cls  # callers catching ValueError keep working


def test_validation_checks_only_trained_stages():
    # The phantom fine stage has 3 classes, so bce is invalid for it...
    with pytest.raises(ConfigError, match="stages.fine: loss bce"):
        load_config("phantom", ["train.loss=bce"])
    # ...but a coarse-only run never builds it.
    cfg = load_config("phantom", ["train.loss=bce", "train.stages=[coarse]"])
    assert cfg["train"]["loss"] == "bce"
    with pytest.raises(ConfigError, match="train.stages"):
        load_config("phantom", ["train.stages=[coarse, medium]"])


def _one_line_error(capsys, argv: list[str], *needles: str) -> str:
    rc = cli.main(argv)
    err = capsys.readouterr().err
    assert rc == 1, err
    assert "Traceback" not in err
    last = [ln for ln in err.replace("\r", "\n").splitlines() if ln.strip()][-1]
    assert last.startswith(f"liverseg-train {argv[0]}: ")
    for n in needles:
        assert n in last, last
    return last


def _common(tmp_path) -> list[str]:
    return [f"output.run_dir={tmp_path / 'run'}", "output.mlflow=false", "output.plots=false",
            "train.epochs=1", "train.iterations_per_epoch=1", "train.stages=[coarse]"]


def test_cli_dataset_error_is_one_line(tmp_path, capsys):
    _one_line_error(capsys, ["train", "lits_msd_liver_tumor", f"data.root={tmp_path / 'missing'}", *_common(tmp_path)],
                    "does not exist")


def _write_cases(tmp_path, bad_label_value: int | None = None) -> list[str]:
    from LiverCTSegmentationLib.engine import io
    from LiverCTSegmentationLib.engine.volume import Volume

    items = []
    for n in range(3):
        ct = Volume(np.zeros((8, 8, 8), np.int16), (4.0, 4.0, 4.0), (0.0, 0.0, 0.0), np.eye(3))
        lab = np.zeros((8, 8, 8), np.uint8)
        lab[2:6, 2:6, 2:6] = 1
        if bad_label_value is not None and n == 0:
            lab[3, 3, 3] = bad_label_value
        io.write_volume(ct, tmp_path / f"c{n}_ct.nii.gz")
        io.write_volume(ct.with_array(lab), tmp_path / f"c{n}_label.nii.gz")
        items.append(f"{{image: {tmp_path / f'c{n}_ct.nii.gz'}, label: {tmp_path / f'c{n}_label.nii.gz'}, "
                     f"case_id: c{n}}}")
    return [f"data.cases=[{', '.join(items)}]", "data.kind=list"]


def test_cli_split_error_is_one_line(tmp_path, capsys):
    argv = ["train", "phantom", *_write_cases(tmp_path), "data.split={val: [nosuch], test: [c2]}", *_common(tmp_path)]
    _one_line_error(capsys, argv, "unknown cases")


def test_cli_label_error_is_one_line(tmp_path, capsys):
    argv = ["train", "phantom", *_write_cases(tmp_path, bad_label_value=7), "data.split={val: [c1], test: [c2]}",
            *_common(tmp_path)]
    _one_line_error(capsys, argv, "unexpected label values [7]")


def test_cli_config_error_is_one_line(tmp_path, capsys):
    _one_line_error(capsys, ["train", "phantom", "train.stages=[nosuch]", *_common(tmp_path)[:3]], "train.stages")
