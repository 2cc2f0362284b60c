"""The semi-supervised CamVid rows (benchmarks/camvid_protocol.py --table=semi): the flag
files parse into one protocol, the fixed partition, the run names and the report."""

import importlib.util
import json
import pathlib

import pytest

from iseg.semi import methods as semi_methods

REPO = pathlib.Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location(
    "camvid_protocol", REPO / "benchmarks" / "camvid_protocol.py")
cp = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cp)

SEMI_DIR = REPO / "configs" / "camvid" / "semi"


def _config(stem, *extra):
    from iseg.cli import flags as flags_lib

    flags_lib.define_train_flags()
    argv = ["train.py", f"--flagfile={REPO / 'configs' / 'camvid' / stem}.cfg", *extra]
    flags_lib.parse_flags(argv, "test")
    return flags_lib.config_from_flags(argv)


def test_semi_rows_are_the_semi_flag_files():
    stems = {stem for _, stem, _ in cp.SEMI_ROWS}
    assert stems == {f"semi/{p.stem}" for p in SEMI_DIR.glob("*.cfg")} - {"semi/base"}
    assert all(seeds == (0, 1) for _, _, seeds in cp.SEMI_ROWS)
    baseline = cp.SEMI_ROWS[0][0]
    assert [m for m, b in cp.SEMI_COMPARISONS if b == baseline] == [
        label for label, _, _ in cp.SEMI_ROWS[1:]]


@pytest.mark.parametrize("stem", [stem for _, stem, _ in cp.SEMI_ROWS])
def test_semi_row_parses_into_the_protocol(monkeypatch, stem):
    method = stem.split("/")[1]
    if method != "supervised" and method not in semi_methods.names():
        pytest.skip(f"--semi={method} is not registered")
    monkeypatch.chdir(REPO)  # the list path is relative to the repository, as the runner runs
    cfg = _config(stem, "--seed=1")
    base = _config("deeplabv3plus_r18_d8")
    # the DeepLabV3+ row's network, optimizer and augmentation, one shortened schedule
    for name in ("head", "backbone", "backbone_options", "head_options", "optimizer", "lr",
                 "schedule", "min_scale", "max_scale", "flip", "brightness"):
        assert getattr(cfg, name) == getattr(base, name), name
    assert cfg.crop_size == (180, 240)  # the whole images, as the semi table was run
    assert (cfg.steps, cfg.batch_size, cfg.eval_every) == (200, 4, 40)
    if method == "supervised":
        assert (cfg.semi, pathlib.Path(cfg.data_dir).name) == ("none", cp.SEMI_DATA_FOLDER)
        return
    assert (cfg.semi, pathlib.Path(cfg.data_dir).name, cfg.unlabeled_batch_size) == (
        method, cp.DATA_FOLDER, 4)
    assert cfg.labeled_fraction is None and cfg.labeled_list == cp.SEMI_LABELED
    semi_methods.build_method(cfg.semi, cfg.semi_options)


def test_the_partition_is_the_seed_0_draw_of_46(shared_dir):
    from iseg.semi import partition

    labeled = sorted(cp.semi_labeled_stems())
    assert len(labeled) == 46
    names = [p.stem for p in (shared_dir / "datasets" / "camvid" / "train").iterdir()]
    assert len(names) == 367
    assert partition.by_fraction(names, 0.125, 0)[0] == labeled
    assert partition.by_fraction(names, 0.125, 1)[0] != labeled  # the seed matters


def test_semi_run_names_and_pending_runs(tmp_path):
    assert cp.run_name("semi/unimatch", 1) == "semi_unimatch_s1"
    (tmp_path / "camvid_semi_supervised_s0.json").write_text("{}")
    pending = cp.pending_runs(str(tmp_path), rows=cp.SEMI_ROWS)
    assert pending[0] == ("semi/unimatch", 0) and len(pending) == 13
    assert cp.pending_runs(str(tmp_path), ["semi/supervised"], cp.SEMI_ROWS) == [
        ("semi/supervised", 1)]


def _record(stem, seed, miou):
    return dict(row=stem, seed=seed, miou=miou, best_miou=miou, best_step=600,
                per_class_iou={"sky": miou}, wall_s=600.0, cpu_s=1200.0,
                load_average=dict(mean=1.0, min=1.0, max=1.0), curve=[[600, miou]])


def test_semi_report_compares_each_method_with_supervised_only(tmp_path, monkeypatch):
    results, doc = tmp_path / "results", tmp_path / "semi.md"
    results.mkdir()
    for stem, seed, miou in (("semi/supervised", 0, 0.30), ("semi/supervised", 1, 0.32),
                             ("semi/unimatch", 0, 0.36), ("semi/unimatch", 1, 0.35),
                             ("semi/cps", 0, 0.33), ("semi/cps", 1, 0.29),
                             ("fcn_r18_d8", 0, 0.5)):  # a row of the other table
        (results / f"camvid_{cp.run_name(stem, seed)}.json").write_text(
            json.dumps(_record(stem, seed, miou)))
    doc.write_text(f"a\n{cp.SEMI_MARKERS[0]}\nold\n{cp.SEMI_MARKERS[1]}\nb\n")
    monkeypatch.setitem(cp.TABLES, "semi", (cp.SEMI_ROWS, cp.SEMI_COMPARISONS, str(doc),
                                            str(tmp_path / "curves.png"), cp.SEMI_MARKERS))
    cp.report(str(results), str(tmp_path / "runs"), table="semi")
    lines = doc.read_text().splitlines()
    assert "| UniMatch | `configs/camvid/semi/unimatch.cfg` | 1 | 35.0 | 35.0 (600) | 10.0 " \
           "| 20.0 | 10.0 | 1.0 |" in lines
    assert "| UniMatch vs supervised only (46 labeled) | +4.5 | 2.0 | yes |" in lines
    assert "| CPS vs supervised only (46 labeled) | +0.0 | 4.0 | no |" in lines
    assert "| iMAS vs supervised only (46 labeled) | | | not yet run (needs both seeds of " \
           "both rows) |" in lines
    assert not any("fcn_r18_d8" in line for line in lines)
    assert not any("(student)" in line for line in lines)  # no EMA row has run
    assert (tmp_path / "curves.png").stat().st_size > 0
    for seed, (teacher, student) in enumerate(((0.10, 0.34), (0.12, 0.37))):
        record = dict(_record("semi/augseg", seed, teacher), student_miou=student)
        (results / f"camvid_{cp.run_name('semi/augseg', seed)}.json").write_text(
            json.dumps(record))
    cp.report(str(results), str(tmp_path / "runs"), table="semi")
    lines = doc.read_text().splitlines()
    assert "| AugSeg | 1 | 12.0 | 37.0 |" in lines
    assert "| AugSeg vs supervised only (46 labeled) | -20.0 | 2.0 | no |" in lines
    assert "| AugSeg (student) vs supervised only (46 labeled) | +4.5 | 3.0 | yes |" in lines
    assert not any("UniMatch (student)" in line for line in lines)


def test_student_scores_only_for_ema_teacher_rows(tmp_path, monkeypatch):
    calls, real_run = [], cp.subprocess.run

    def fake_run(cmd, *args, **kwargs):  # what `evaluate --semi_weights=student` writes
        if "iseg.cli.evaluate" not in cmd:
            return real_run(cmd, *args, **kwargs)
        calls.append(cmd)
        folder = tmp_path / "run" / "eval_student"
        folder.mkdir(parents=True)
        (folder / "val_whole_step200_results.json").write_text(
            json.dumps({"miou": 0.33, "per_class_iou": {"sky": 0.9}, "step": 200}))

    monkeypatch.setattr(cp.subprocess, "run", fake_run)
    for stem in ("semi/supervised", "semi/unimatch", "semi/cps", "fcn_r18_d8"):
        assert cp.add_student_scores({"miou": 0.2}, stem, str(tmp_path / "run"), "d") == {
            "miou": 0.2}
    assert not calls
    record = cp.add_student_scores({"miou": 0.2}, "semi/imas", str(tmp_path / "run"), "d")
    assert record == {"miou": 0.2, "student_miou": 0.33, "student_per_class_iou": {"sky": 0.9}}
    assert "--semi_weights=student" in calls[0] and \
        "--flagfile=configs/camvid/semi/imas.cfg" in calls[0]


def test_prepare_data_keeps_only_the_listed_training_images(tmp_path, monkeypatch):
    seen = {}

    def fake_convert(name, folder, output_dir, progress):
        seen.update({s: sorted(p.name for p in (pathlib.Path(folder) / s).iterdir())
                     for s in ("train", "trainannot", "val")})

    import iseg.datasets

    monkeypatch.setattr(iseg.datasets, "convert_dataset", fake_convert)
    import numpy as np
    from PIL import Image

    src = tmp_path / "camvid"
    for split, stems in (("train", ("a", "b", "c")), ("val", ("d",))):
        (src / split).mkdir(parents=True)
        (src / f"{split}annot").mkdir()
        for s in stems:
            Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(src / split / f"{s}.png")
            Image.fromarray(np.zeros((4, 4), np.uint8)).save(src / f"{split}annot" / f"{s}.png")
    cp.prepare_data(str(src), str(tmp_path / "out"), train_keep={"a", "c"})
    assert seen == {"train": ["a.jpg", "c.jpg"], "trainannot": ["a.png", "c.png"],
                    "val": ["d.jpg"]}


@pytest.mark.slow  # traces a semi-supervised step of two networks
def test_measure_step_times_a_tiny_semi_row(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    cpu, wall = cp.measure_step("semi/cps", 1, str(tmp_path), [
        "--backbone_options=output_stride=8,stem_width=4,widths=(4,4,4,4)",
        "--head_options=channels=4,low_level_channels=4,rates=(1,2,3),output_stride=8",
        "--crop_size=32,32", "--batch_size=1", "--unlabeled_batch_size=1"])
    assert 0 < cpu < 120 and 0 < wall < 600
