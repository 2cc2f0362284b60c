"""The CamVid protocol runner (benchmarks/camvid_protocol.py): data downscaling, the run
order and resume, the best-checkpoint bookkeeping and the report tables."""

import argparse
import importlib.util
import json
import os
import pathlib

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location(
    "camvid_protocol", REPO / "benchmarks" / "camvid_protocol.py")
cp = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cp)


def test_rows_are_the_camvid_flag_files():
    stems = [stem for _, stem, _ in cp.ROWS]
    assert sorted(stems) == sorted(p.stem for p in (REPO / "configs" / "camvid").glob("*.cfg"))
    labels = {label for label, _, _ in cp.ROWS}
    for method, baseline in cp.COMPARISONS:  # compared rows have two seeds
        assert {method, baseline} <= labels
        assert all(len(seeds) == 2 for label, _, seeds in cp.ROWS
                   if label in (method, baseline))


def test_run_order_first_seeds_then_second_seeds():
    rows = (("A", "a", (0, 1)), ("B", "b", (0,)), ("C", "c", (0, 1)))
    assert cp.run_order(rows) == [("A", "a", 0), ("B", "b", 0), ("C", "c", 0),
                                  ("A", "a", 1), ("C", "c", 1)]


def test_pending_runs_skip_finished_ones(tmp_path):
    order = [(stem, seed) for _, stem, seed in cp.run_order()]
    assert order[0] == ("fcn_r18_d8", 0)
    (tmp_path / "camvid_fcn_r18_d8_s0.json").write_text("{}")
    assert cp.pending_runs(str(tmp_path)) == order[1:]
    assert cp.pending_runs(str(tmp_path), ["fcn_r18_d8"]) == [("fcn_r18_d8", 1)]


def test_downscale_pair_against_a_loop():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (7, 9, 3), dtype=np.uint8)
    label = rng.integers(0, 12, (7, 9, 1), dtype=np.uint8)
    small, small_label = cp.downscale_pair(image, label, 2)
    assert small.shape == (3, 4, 3) and small_label.shape == (3, 4, 1)
    for i in range(3):
        for j in range(4):
            block = image[2 * i:2 * i + 2, 2 * j:2 * j + 2].reshape(4, 3).astype(float)
            np.testing.assert_array_equal(small[i, j], np.round(block.mean(0)))
            assert small_label[i, j, 0] == label[2 * i + 1, 2 * j + 1, 0]
    assert small.dtype == np.uint8


def _write_eval(folder, name, step, miou):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}_results.json"
    path.write_text(json.dumps(dict(step=step, miou=miou, pixel_accuracy=0.9,
                                    per_class_iou={"sky": miou, "road": 1.0})))
    return path


def test_read_evaluations_and_summarize(tmp_path):
    ev = tmp_path / "eval"
    _write_eval(ev, "val_whole_step100", 100, 0.30)
    _write_eval(ev, "val_whole_step300", 300, 0.45)
    old = _write_eval(ev, "val_whole_step200", 200, 0.10)
    os.utime(old, (1, 1))  # the older evaluation of step 200 (before a resume)
    _write_eval(ev, "val_whole_step200-2", 200, 0.50)
    evaluations = cp.read_evaluations(str(tmp_path))
    assert [step for step, _ in evaluations] == [100, 200, 300]
    s = cp.summarize(evaluations)
    assert (s["final_step"], s["miou"], s["best_step"], s["best_miou"]) == (300, 0.45, 200, 0.5)
    assert s["curve"] == [[100, 0.3], [200, 0.5], [300, 0.45]]
    assert s["per_class_iou"] == {"sky": 0.45, "road": 1.0}
    with pytest.raises(ValueError, match="no evaluation results"):
        cp.summarize([])


def test_keep_best_copies_that_checkpoint(tmp_path):
    ckpt = tmp_path / "checkpoints"
    ckpt.mkdir()
    for step in (100, 200):
        for ext in ("index", "data-00000-of-00001"):
            (ckpt / f"ckpt-{step}.{ext}").write_text(f"{step}{ext}")
    assert cp.keep_best(str(tmp_path), 100) == str(tmp_path / "best" / "ckpt-100")
    assert sorted(os.listdir(tmp_path / "best")) == ["ckpt-100.data-00000-of-00001",
                                                     "ckpt-100.index"]
    assert (tmp_path / "best" / "ckpt-100.index").read_text() == "100index"
    with pytest.raises(FileNotFoundError, match="no checkpoint ckpt-300"):
        cp.keep_best(str(tmp_path), 300)


def test_compare_uses_the_seed_spread():
    c = cp.compare([0.50, 0.52], [0.45, 0.46])
    assert c["diff"] == pytest.approx(0.055) and c["spread"] == pytest.approx(0.02)
    assert c["beats"]
    assert not cp.compare([0.50, 0.52], [0.44, 0.51])["beats"]  # 0.035 < spread 0.07
    assert cp.compare([0.5], [0.4, 0.41]) is None


def _record(stem, seed, miou):
    return dict(row=stem, seed=seed, miou=miou, best_miou=miou + 0.01, best_step=900,
                per_class_iou={"sky": 0.8, "road": miou}, wall_s=600.0, cpu_s=1500.0,
                load_average=dict(mean=1.5, min=1.0, max=2.0), curve=[[150, 0.2],
                                                                      [1200, miou]])


def test_report_tables_and_doc_markers(tmp_path):
    records = {("nl_r18_d8", 0): _record("nl_r18_d8", 0, 0.40),
               ("nl_r18_d8", 1): _record("nl_r18_d8", 1, 0.41),
               ("nl_r18_d8_car", 0): _record("nl_r18_d8_car", 0, 0.45),
               ("nl_r18_d8_car", 1): _record("nl_r18_d8_car", 1, 0.47)}
    for record in records.values():
        (tmp_path / f"camvid_{record['row']}_s{record['seed']}.json").write_text(
            json.dumps(record))
    assert cp.load_records(str(tmp_path)) == records
    md = cp.report_tables(records)
    lines = md.splitlines()
    assert "| self-attention + CAR | `configs/camvid/nl_r18_d8_car.cfg` | 1 | 47.0 | 48.0 (900) " \
           "| 10.0 | 25.0 | 12.5 | 1.5 |" in lines
    assert "| FCN | `configs/camvid/fcn_r18_d8.cfg` | 0 | not yet run | | | | | |" in lines
    assert "| self-attention + CAR vs self-attention | +5.5 | 2.0 | yes |" in lines
    assert "| CAA + CAR vs CAA | | | not yet run (needs both seeds of both rows) |" in lines
    assert "| self-attention | 1 | 80.0 | 41.0 |" in lines
    records[("nl_r18_d8", 0)]["resumed"] = True  # its times cover only the last part
    assert "| self-attention | `configs/camvid/nl_r18_d8.cfg` | 0 | 40.0 | 41.0 (900) " \
           "| 10.0 (resumed) | 25.0 | 12.5 | 1.5 |" in cp.report_tables(records).splitlines()
    unfinished = {("fcn_r18_d8", 0): [[125, 0.3], [250, 0.42]]}
    assert "| FCN | `configs/camvid/fcn_r18_d8.cfg` | 0 | not yet run (unfinished: 42.0 at " \
           "step 250) | | | | | |" in cp.report_tables(records, unfinished).splitlines()
    doc = tmp_path / "doc.md"
    doc.write_text(f"intro\n{cp.MARKERS[0]}\nold\n{cp.MARKERS[1]}\nend\n")
    cp.write_doc_tables("new table", str(doc))
    assert doc.read_text() == f"intro\n{cp.MARKERS[0]}\nnew table\n{cp.MARKERS[1]}\nend\n"
    doc.write_text("no markers\n")
    with pytest.raises(ValueError, match="markers"):
        cp.write_doc_tables("x", str(doc))
    assert doc.read_text() == "no markers\n"


def test_measure_step_times_a_tiny_version_of_a_row(tmp_path):
    cpu, wall = cp.measure_step("fcn_r18_d8", 2, str(tmp_path), [
        "--backbone_options=output_stride=8,stem_width=4,widths=(4,4,4,4)",
        "--head_options=channels=4,end_channels=4", "--crop_size=32,32", "--batch_size=1"])
    assert 0 < cpu < 60 and 0 < wall < 60
    with pytest.raises(SystemExit):  # a bad flag is the flag parser's one-line error
        cp.measure_step("fcn_r18_d8", 1, str(tmp_path), ["--batch_size=x"])


def test_a_failing_row_returns_none_and_keeps_its_log(tmp_path, capsys):
    args = argparse.Namespace(runs_dir=str(tmp_path / "runs"), log_dir=str(tmp_path),
                              data_root=str(tmp_path / "no_data"))
    assert cp.run_row("fcn_r18_d8", 0, args) is None
    log = (tmp_path / "fcn_r18_d8_s0.log").read_text()
    assert f"--data_dir={tmp_path / 'no_data' / 'camvid_240x180'} does not exist" in log
    assert "fcn_r18_d8_s0: train.py exited with 1" in capsys.readouterr().out


def test_unfinished_curves_are_runs_with_evaluations_and_no_record(tmp_path):
    _write_eval(tmp_path / "fcn_r18_d8_s0" / "eval", "val_whole_step125", 125, 0.3)
    _write_eval(tmp_path / "nl_r18_d8_s1" / "eval", "val_whole_step125", 125, 0.2)
    (tmp_path / "caa_r18_d8_s0").mkdir()  # started, not evaluated yet
    records = {("nl_r18_d8", 1): _record("nl_r18_d8", 1, 0.4)}
    assert cp.unfinished_curves(str(tmp_path), records) == {("fcn_r18_d8", 0): [[125, 0.3]]}


def test_plot_curves_writes_a_png(tmp_path):
    records = {("fcn_r18_d8", s): _record("fcn_r18_d8", s, 0.4 + s / 100) for s in (0, 1)}
    path = tmp_path / "curves.png"
    cp.plot_curves(records, str(path), {("nl_r18_d8", 0): [[125, 0.3]]})
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
