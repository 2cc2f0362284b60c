"""What a new user meets first: `--help` on every entry point, quiet start-up, flag-file
errors that name the file, a missing dataset failing before anything is written or
imported, and the data root."""

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from iseg.cli import flags as flags_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = {  # entry point -> (a flag only it lists in --help, a flag it does not read)
    "train.py": ("--lr=", "--save_confusion"),
    "iseg.cli.evaluate": ("--checkpoint=", "--lr="),
    "iseg.cli.export": ("--export_scales=", "--eval_flip"),
    "iseg.cli.predict": ("--input=", "--model_dir="),
    "iseg.cli.convert": ("--num_shards=", "--model_dir="),
    "iseg.cli.partition": ("--labeled_fraction=", "--lr="),
    "iseg.cli.benchmark": ("--matmul_size=", "--lr="),
}
NOISE = ("cuda", "cuinit", "cpu_feature", "optimized to use available cpu", "onednn",
         "absl::initializelog")


def _run(args, cwd=REPO, env=None, script=False):
    env = dict(os.environ if env is None else env)
    env.pop("TF_CPP_MIN_LOG_LEVEL", None) if env is not None else None
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    cmd = args if script else [sys.executable] + args
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def _tool_args(tool):
    return [os.path.join(REPO, tool)] if tool.endswith(".py") else ["-m", tool]


@pytest.mark.parametrize("tool", sorted(TOOLS))
def test_help_lists_the_tools_flags_grouped_with_defaults(tool):
    own, foreign = TOOLS[tool]
    outputs = {}
    for arg in ("--help", "-h", "--helpshort", "--helpfull"):
        r = _run(_tool_args(tool) + [arg])
        assert r.returncode == 0, (arg, r.stderr[-2000:])
        assert r.stdout.startswith(f"usage: {tool}"), r.stdout[:200]
        outputs[arg] = r.stdout
    short = outputs["--help"]
    assert outputs["-h"] == outputs["--helpshort"] == short
    assert own in short and foreign not in short
    assert "General:\n  --[no]progress (default: true)" in short
    full = outputs["--helpfull"]
    assert own in full and "--verbosity=" in full and len(full) > len(short)


def test_help_texts():
    r = _run(["-m", "iseg.cli.evaluate", "--help"])
    assert "  --eval_scales=<list> (default: 1.0)\n      Inference scales" in r.stdout
    assert "  --eval_mode={whole|slide} (default: whole)\n" in r.stdout
    assert "\n  --checkpoint=<string> (default: none)\n      Checkpoint to start from" in r.stdout
    assert "\nEvaluate:\n  --split=<string> (default: none)" in r.stdout
    r = _run(["-m", "iseg.cli.convert", "--help"])
    # the usage examples keep their line continuations (no runs of spaces)
    assert "--data_dir=/data/cityscapes \\\n        --output_dir=" in r.stdout
    assert "  --compression={NONE|GZIP|ZLIB} (default: NONE)" in r.stdout


@pytest.mark.parametrize("script", ["iseg-train", "iseg-evaluate", "iseg-export",
                                    "iseg-predict", "iseg-convert", "iseg-benchmark"])
def test_console_scripts_answer_help(script):
    path = shutil.which(script) or os.path.join(os.path.dirname(sys.executable), script)
    if not os.path.isfile(path):
        pytest.skip(f"{script} is not installed")
    r = _run([sys.executable, path, "--help"], script=True)
    assert r.returncode == 0 and r.stdout.startswith("usage: "), r.stderr[-2000:]


def test_default_run_is_quiet_and_verbosity_brings_tensorflow_logs_back(tmp_path):
    args = ["-m", "iseg.cli.export", f"--model_dir={tmp_path / 'none'}", "--model=demo_tiny",
            "--dataset=shapes"]
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    quiet = _run(args, env=env)
    assert quiet.returncode == 1
    assert quiet.stderr.splitlines() == [
        f"iseg.cli.export: error: no checkpoint found at {tmp_path / 'none'}"], quiet.stderr
    loud = _run(args + ["--verbosity=0"], env=env)
    assert loud.returncode == 1
    assert any(n in loud.stderr.lower() for n in NOISE), loud.stderr
    assert len(loud.stderr.splitlines()) > 1


def test_tensorflow_info_lines_are_dropped_unless_verbosity_is_given():
    import logging

    from absl import logging as absl_logging

    from iseg.cli import usage

    def shown(path, level=logging.INFO):
        record = logging.LogRecord("absl", level, path, 1, "message", None, None)
        return bool(absl_logging.get_absl_handler().filter(record))

    tf_file = os.path.join(os.sep, "venv", "site-packages", "tensorflow", "python", "x.py")
    keras_file = os.path.join(os.sep, "venv", "site-packages", "keras", "src", "y.py")
    ours = os.path.join(REPO, "iseg", "datasets", "pipeline.py")
    usage.quiet_library_logs(True)
    try:
        assert not shown(tf_file) and not shown(keras_file)
        assert shown(ours) and shown(tf_file, logging.WARNING)
    finally:
        usage.quiet_library_logs(False)
    assert shown(tf_file) and shown(keras_file)


def test_unknown_flag_in_a_flag_file_names_the_file(tmp_path, capsys):
    from iseg.cli import train

    base = tmp_path / "base.cfg"
    base.write_text("--steps=3\n--learning_rat=0.1\n")
    top = tmp_path / "top.cfg"
    top.write_text(f"--flagfile={base}\n--batch_size=2\n")
    try:
        with pytest.raises(SystemExit) as e:
            train.run(["train.py", f"--flagfile={top}"])
    finally:
        flags_lib.FLAGS.unparse_flags()
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "learning_rat" in err[0] and err[0].endswith(f"(in flag file {base})")
    bad_value = tmp_path / "value.cfg"
    bad_value.write_text("--batch_size=2\n--steps=x\n")
    for args, origin in (([f"--flagfile={bad_value}"], f" (in flag file {bad_value})"),
                         (["--steps=x"], "")):  # a command-line flag names no file
        try:
            with pytest.raises(SystemExit):
                train.run(["train.py", *args])
        finally:
            flags_lib.FLAGS.unparse_flags()
        err = capsys.readouterr().err.strip()
        assert err == f"train.py: error: flag --steps=x: invalid literal for int() with base " \
            f"10: 'x'{origin}"


def test_evaluating_the_teacher_of_a_method_without_one_is_refused(capsys):
    from iseg.cli import evaluate

    try:
        with pytest.raises(SystemExit) as e:
            evaluate.run(["evaluate", f"--flagfile={REPO}/configs/demo/shapes.cfg",
                          "--semi=unimatch", "--semi_weights=teacher"])
    finally:
        flags_lib.FLAGS.unparse_flags()
    assert e.value.code != 0
    assert capsys.readouterr().err.strip().splitlines() == [
        "iseg.cli.evaluate: error: --semi_weights=teacher: --semi=unimatch has no EMA teacher (its "
        "checkpoints hold the student only)"]


MISSING = """--flagfile={repo}/configs/camvid/fcn_r18_d8.cfg
--data_root={root}
"""


def test_missing_dataset_fails_before_tensorflow_and_writes_nothing(tmp_path):
    cfg = tmp_path / "cfg" / "fcn.cfg"
    cfg.parent.mkdir()
    cfg.write_text(MISSING.format(repo=REPO, root=tmp_path / "data"))
    work = tmp_path / "work"
    work.mkdir()
    before = sorted(os.walk(tmp_path))
    code = ("import sys; from iseg.cli import train\n"
            "try:\n    train.run()\nfinally:\n"
            "    print('tensorflow' in sys.modules, file=sys.stderr)\n")
    r = _run(["-c", code, f"--flagfile={cfg}"], cwd=work)
    assert r.returncode == 1
    missing = tmp_path / "data" / "camvid_240x180"
    assert r.stderr.splitlines() == [
        f"train.py: error: --data_dir={missing} does not exist (--data_dir=camvid_240x180 "
        f"resolved "
        f"against the data root {tmp_path / 'data'}: set ISEG_DATA or --data_root)", "False"]
    assert sorted(os.walk(tmp_path)) == before  # no runs/<name>/run_config.json


def test_dataset_checks_name_the_flag(tmp_path, monkeypatch):
    from iseg.datasets.synthetic import generate_shapes

    flags_lib.define_train_flags()
    data = tmp_path / "shapes"
    generate_shapes(str(data), num_train=2, num_val=1, image_size=(16, 16), num_shards=1)
    (tmp_path / "raw").mkdir()

    def check(*args):
        flags_lib.FLAGS(["prog", *args])
        try:
            flags_lib.check_data(["train", "val"])
        finally:
            flags_lib.FLAGS.unparse_flags()

    check(f"--data_dir={data}")
    with pytest.raises(flags_lib.CliError, match=r"^unknown --dataset=camvd; valid: .*camvid"):
        check(f"--data_dir={data}", "--dataset=camvd")
    with pytest.raises(flags_lib.CliError, match=r"^no dataset_info.json in --data_dir=.*raw: "
                       r"convert the dataset first .* give --dataset=NAME"):
        check(f"--data_dir={tmp_path / 'raw'}")
    with pytest.raises(flags_lib.CliError, match=r"no record files for split 'test'"):
        flags_lib.FLAGS(["prog", f"--data_dir={data}"])
        try:
            flags_lib.check_data(["test"])
        finally:
            flags_lib.FLAGS.unparse_flags()
    monkeypatch.delenv("ISEG_DATA", raising=False)
    with pytest.raises(flags_lib.CliError, match=r"^--data_dir=data/nope does not exist"):
        check("--data_dir=nope")


def test_relative_data_dir_resolves_against_the_data_root(tmp_path, monkeypatch):
    flags_lib.define_train_flags()

    def resolved(*args):
        flags_lib.FLAGS(["prog", *args])
        try:
            return flags_lib.resolved_data_dir()
        finally:
            flags_lib.FLAGS.unparse_flags()

    monkeypatch.delenv("ISEG_DATA", raising=False)
    assert resolved("--data_dir=camvid") == os.path.join("data", "camvid")
    monkeypatch.setenv("ISEG_DATA", str(tmp_path))
    assert resolved("--data_dir=camvid") == str(tmp_path / "camvid")
    assert resolved("--data_dir=camvid", "--data_root=/r") == "/r/camvid"
    assert resolved("--data_dir=/abs/camvid") == "/abs/camvid"
    assert resolved("--data_dir=gs://b/camvid") == "gs://b/camvid"
    flags_lib.FLAGS(["prog", "--data_dir=camvid"])
    try:
        assert flags_lib.config_from_flags(["prog"]).data_dir == str(tmp_path / "camvid")
    finally:
        flags_lib.FLAGS.unparse_flags()


def _convert(capsys, *args):
    """Run the converter in this process: (exit code, stderr lines)."""
    from iseg.cli import convert

    code = 0
    try:
        convert.run(["convert", *args, "--noprogress"])
    except SystemExit as e:
        code = e.code
    finally:
        flags_lib.FLAGS.unparse_flags()
    return code, capsys.readouterr().err.strip().splitlines()


def test_converter_errors_are_one_line_and_change_nothing(tmp_path, capsys):
    from datasets_testutil import save_image, save_label

    raw = tmp_path / "raw"
    sets = raw / "ImageSets" / "Segmentation"
    sets.mkdir(parents=True)
    (sets / "train.txt").write_text("x\n")
    (sets / "val.txt").write_text("")  # an empty split
    save_image(str(raw / "JPEGImages" / "x.jpg"), np.zeros((6, 7, 3)), "JPEG")
    save_label(str(raw / "SegmentationClass" / "x.png"), np.eye(6, 7))
    out = tmp_path / "out"
    before = sorted(os.walk(tmp_path))
    code, err = _convert(capsys, "--dataset=camvd", f"--data_dir={raw}", f"--output_dir={out}")
    assert code == 1 and len(err) == 1
    assert err[0].startswith("iseg.cli.convert: error: unknown --dataset=camvd; valid: ")
    code, err = _convert(capsys, "--dataset=camvid", f"--data_dir={tmp_path / 'nope'}",
                         f"--output_dir={out}")
    assert (code, err) == (1, [f"iseg.cli.convert: error: --data_dir {tmp_path / 'nope'} "
                               "does not exist"])
    args = ["--dataset=voc2012", f"--data_dir={raw}", f"--output_dir={out}",
            "--splits=train,val"]
    code, err = _convert(capsys, *args)
    assert (code, err) == (1, ["iseg.cli.convert: error: split 'val' of voc2012 has no "
                               "examples"])
    code, err = _convert(capsys, *args[:-1], "--splits=train", "--num_shards=2")
    assert (code, err) == (1, ["iseg.cli.convert: error: split 'train' has 1 examples, "
                               "fewer than --num_shards=2"])
    assert sorted(os.walk(tmp_path)) == before


ALLOCATOR_PROBE = """
import os, sys
from iseg.cli import flags
value = flags.run_cli("probe", lambda: None, lambda argv: os.environ.get(
    "TF_CPU_ALLOCATOR_USE_BFC"), ["probe"], uses_tensorflow=lambda: sys.argv[1] == "tf")
print(value, "tensorflow" in sys.modules)
"""


@pytest.mark.parametrize("user_value", [None, "false"])
def test_tools_default_tensorflow_to_its_bfc_cpu_allocator_unless_the_user_chose(user_value):
    env = {k: v for k, v in os.environ.items() if k != "TF_CPU_ALLOCATOR_USE_BFC"}
    if user_value is not None:
        env["TF_CPU_ALLOCATOR_USE_BFC"] = user_value
    r = _run(["-c", ALLOCATOR_PROBE, "tf"], env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == [user_value or "true", "True"]
    r = _run(["-c", ALLOCATOR_PROBE, "none"], env=env)  # a run without TensorFlow
    assert r.stdout.split() == [str(user_value), "False"], r.stderr[-2000:]
