"""Flag files (nesting, relative paths, errors), flag -> config mapping, bad names."""

import os
import subprocess
import sys

import pytest

from iseg.cli import flags as flags_lib
from iseg.cli.flags import FlagFileError, config_name, expand_flagfiles, parse_options

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_nested_relative_flagfiles_resolve_against_the_including_file(tmp_path, monkeypatch):
    _write(tmp_path / "cfg/common/base.cfg", "# comment\n--seed=1\n--lr=0.1\n")
    _write(tmp_path / "cfg/datasets/d.cfg", "--flagfile=../common/base.cfg\n--dataset=x\n")
    exp = _write(tmp_path / "cfg/exp/run.cfg",
                 "// another comment\n\n--flagfile=../datasets/d.cfg\n--lr=0.5\n")
    elsewhere = tmp_path / "somewhere/else"
    elsewhere.mkdir(parents=True)
    monkeypatch.chdir(elsewhere)
    rel = os.path.relpath(exp, elsewhere)
    argv = expand_flagfiles(["prog", f"--flagfile={rel}", "--steps=3"])
    assert argv == ["prog", "--seed=1", "--lr=0.1", "--dataset=x", "--lr=0.5", "--steps=3"]
    assert expand_flagfiles(["prog", "--flagfile", rel])[1:3] == ["--seed=1", "--lr=0.1"]
    assert config_name(["prog", f"--flagfile={rel}"]) == "run"


def test_missing_flagfile_names_the_file_and_the_including_file(tmp_path):
    top = _write(tmp_path / "top.cfg", "--flagfile=sub/missing.cfg\n")
    with pytest.raises(FlagFileError) as e:
        expand_flagfiles(["prog", f"--flagfile={top}"])
    msg = str(e.value)
    assert os.path.join(str(tmp_path), "sub", "missing.cfg") in msg
    assert f"included from {top}" in msg
    with pytest.raises(FlagFileError, match="nope.cfg"):
        expand_flagfiles(["prog", "--flagfile=nope.cfg"])


def test_recursive_flagfiles_are_an_error(tmp_path):
    _write(tmp_path / "a.cfg", "--flagfile=b.cfg\n")
    _write(tmp_path / "b.cfg", "--flagfile=a.cfg\n")
    with pytest.raises(FlagFileError, match="recursively"):
        expand_flagfiles(["prog", f"--flagfile={tmp_path / 'a.cfg'}"])


def test_parse_options():
    assert parse_options("depths=(1,1),widths=[4, 8],name=abc,rate=0.5", "x") == {
        "depths": (1, 1), "widths": [4, 8], "name": "abc", "rate": 0.5}
    with pytest.raises(ValueError, match="--x: expected key=value"):
        parse_options("oops", "x")


def _run_cli(args, cwd=REPO):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run([sys.executable] + args, cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def test_cli_unknown_flag_and_missing_flagfile_are_one_line_errors(tmp_path):
    r = _run_cli(["train.py", "--flagfile=configs/demo/shapes.cfg", "--learning_rat=3"])
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "learning_rat" in lines[0] and "error" in lines[0]
    r = _run_cli(["-m", "iseg.cli.evaluate", f"--flagfile={tmp_path}/absent.cfg"])
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "absent.cfg" in lines[0]


def test_the_shipped_configs_expand_from_any_directory(tmp_path):
    configs = os.path.join(REPO, "configs")
    for root, _, files in os.walk(configs):
        for f in files:
            if f.endswith(".cfg"):
                argv = expand_flagfiles(["prog", f"--flagfile={os.path.join(root, f)}"])
                assert all(a.startswith("--") for a in argv[1:]), f
    demo = expand_flagfiles(["prog", f"--flagfile={configs}/demo/shapes.cfg"])
    assert "--model=demo_tiny" in demo and "--dataset=shapes" in demo


def test_config_from_flags_and_defaults(tmp_path):
    flags_lib.define_train_flags()
    cfg_file = _write(tmp_path / "exp1.cfg", "--crop_size=65\n--eval_scales=0.5,1.0\n"
                      "--backbone_options=depths=(1,1,1,1)\n--batch_size=4\n"
                      "--neck=sdn\n--neck_options=guidance=self,guidance_power=1\n"
                      "--head_lr_multiplier=10\n")
    argv = ["prog", f"--flagfile={cfg_file}"]
    flags_lib.FLAGS(expand_flagfiles(argv))
    try:
        cfg = flags_lib.config_from_flags(argv)
        assert cfg.crop_size == (65, 65)
        assert cfg.eval_scales == (0.5, 1.0)
        assert cfg.backbone_options == {"depths": (1, 1, 1, 1)}
        assert cfg.batch_size == 4
        # every dict option parses key=value,... (the SDN neck's too)
        assert cfg.neck_options == {"guidance": "self", "guidance_power": 1}
        assert cfg.head_options == {}
        assert cfg.head_lr_multiplier == 10.0
        assert cfg.model_dir == os.path.join("runs", "exp1")
    finally:
        flags_lib.FLAGS.unparse_flags()


def test_unknown_model_backbone_head_dataset_list_valid_names():
    from iseg.training.config import TrainConfig, build_model_from_config, dataset_meta
    from iseg.errors import ConfigError

    meta = dataset_meta(TrainConfig(dataset="shapes"))
    with pytest.raises(ConfigError, match="Unknown model 'nope'.*resnet50_d8"):
        build_model_from_config(TrainConfig(model="nope"), meta)
    with pytest.raises(ConfigError, match="Unknown backbone 'resnet7'.*resnet50"):
        build_model_from_config(TrainConfig(head="fcn", backbone="resnet7"), meta)
    with pytest.raises(ConfigError, match="Unknown head 'fcnn'.*deeplabv3"):
        build_model_from_config(TrainConfig(head="fcnn", backbone="resnet50"), meta)
    with pytest.raises(ConfigError, match="Unknown dataset 'pascal'.*pascal_context"):
        dataset_meta(TrainConfig(dataset="pascal"))
    with pytest.raises(ConfigError, match="--model, or both --head and --backbone"):
        build_model_from_config(TrainConfig(head="fcn"), meta)


CHECK_FLAGS_FROM_CONFIG = """
import dataclasses, os, sys
from iseg.cli import flags as flags_lib
from iseg.training.config import TrainConfig

flags_lib.define_train_flags()
assert "tensorflow" not in sys.modules  # bad flags are reported without loading TF
flags_lib.FLAGS(["prog"])
cfg = flags_lib.config_from_flags(["prog"])
assert cfg == TrainConfig(model_dir=os.path.join("runs", "default")), cfg
for field in dataclasses.fields(TrainConfig):
    flag = flags_lib.FLAGS[field.name]
    assert flag.help.endswith(field.metadata["help"]), field.name
    assert getattr(flag.parser, "enum_values", None) == field.metadata["choices"], field.name
"""


def test_every_config_field_is_a_flag_with_its_default_help_and_choices():
    # a fresh process: flags are global, and other entry points define some names
    # (e.g. predict's --flip) first when they run in this one
    r = _run_cli(["-c", CHECK_FLAGS_FROM_CONFIG])
    assert r.returncode == 0, r.stderr[-2000:]
