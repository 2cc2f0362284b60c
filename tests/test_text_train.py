"""The text demo configs through train.py (shortened): synthetic data rendered on first
use, training on the engine with checkpoints and resume, per-split evaluation, TensorBoard
summaries and the SavedModel export; the shipped text configs resolve."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs" / "text"

TINY = """--flagfile={config}
--data_dir={data}
--synth_train=24
--synth_test=6
--synth_workers=1
--max_length=5
--crop_size=16,40
--batch_size=4
--steps={steps}
--checkpoint_every=2
--log_every=1
--eval_batch_size=4
--num_summary_images=2
--progress=false
--text_model_options={options}
"""
OPTIONS = {
    "faclstm_synth": "decoder_filters=4,attention_units=4,embed_dim=3,mask_filters=4,"
                     "encoder_options={'stages':((4,1,(2,2)),(8,1,(2,1)))}",
    "crnn_synth": "hidden=4,num_layers=1,encoder_options={'stages':((4,1,(2,2)),(8,1,(2,1)))}",
}


def _train(root, name, steps):
    cfg = root / f"{name}.cfg"
    cfg.write_text(TINY.format(config=CONFIGS / f"{name}.cfg", data=root / "data",
                               steps=steps, options=OPTIONS[name]))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    r = subprocess.run([sys.executable, str(REPO / "train.py"), f"--flagfile={cfg}"],
                       cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout


@pytest.mark.parametrize("name", ["faclstm_synth", "crnn_synth"])
def test_text_demo_config_trains_evaluates_exports_and_resumes(tmp_path, name):
    from iseg.text.export import is_text_export
    from iseg.text.records import load_text_info
    from iseg.training.summaries import read_events

    out = _train(tmp_path, name, steps=2)
    model_dir = tmp_path / "runs" / name
    assert "Done: 2 steps" in out and "test_curved" in out and "word accuracy" in out
    info = load_text_info(str(tmp_path / "data"))
    assert info["num_examples"] == {"train": 24, "test": 6, "test_curved": 6}
    results = json.loads((model_dir / "eval" / "text_results.json").read_text())
    assert results["step"] == 2 and set(results["results"]) == {"test", "test_curved"}
    assert results["results"]["test"]["num_images"] == 6
    assert is_text_export(str(model_dir / "export"))
    scalars, images = read_events(str(model_dir / "logs"))
    assert "test/word_accuracy" in scalars and images.get("test/samples") == 1
    assert [s for s, _ in scalars["loss"]] == [1, 2]
    if name != "faclstm_synth":
        return  # resuming is the engine's: checked once
    # the same command with more steps resumes from the step-2 checkpoint
    out = _train(tmp_path, name, steps=3)
    assert "Done: 3 steps" in out
    scalars, _ = read_events(str(model_dir / "logs" / "train"))
    assert [s for s, _ in scalars["loss"]] == [1, 2, 3]


def test_text_configs_resolve():
    from absl import flags

    from iseg.cli import flags as iflags
    from iseg.cli.text import define_text_flags, text_options
    from iseg.text.train import make_model_fn

    iflags.define_train_flags()
    define_text_flags()
    for name in ("faclstm_synth", "crnn_synth"):
        argv = ["train.py", f"--flagfile={CONFIGS / name}.cfg"]
        flags.FLAGS.unparse_flags()
        flags.FLAGS(iflags.expand_flagfiles(argv))
        cfg = iflags.config_from_flags(argv)
        assert flags.FLAGS.task == "text" and flags.FLAGS.text_model == name.split("_")[0]
        assert cfg.model_dir == f"runs/{name}" and cfg.crop_size == (32, 100)
        # the flag file's model options build the network and it reads a crop
        model = make_model_fn(text_options(), cfg.crop_size)()
        tokens, scores = model.recognize(np.zeros((2, 32, 100, 1), "float32"))
        assert tokens.shape[0] == 2 and scores.shape == (2,)
    flags.FLAGS.unparse_flags()


def test_text_step_benchmark_reads_the_demo_options_as_train_py_does(tmp_path, monkeypatch):
    import importlib.util

    spec = importlib.util.spec_from_file_location("text_step", REPO / "benchmarks" / "text_step.py")
    text_step = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(text_step)
    assert "classifier_units=256" in text_step.demo_options()  # the shipped demo config
    inner, outer = tmp_path / "inner.cfg", tmp_path / "outer.cfg"
    inner.write_text("--text_model_options=decoder_filters=8\n--steps=3\n")
    outer.write_text(f"--flagfile={inner}\n--text_model_options=decoder_filters=16\n")
    monkeypatch.setattr(text_step, "DEMO_CONFIG", str(outer))
    assert text_step.demo_options() == "decoder_filters=16"  # the later one wins
    outer.write_text(f"--flagfile={inner}\n")
    assert text_step.demo_options() == "decoder_filters=8"  # from the nested file
    inner.write_text("--steps=3\n")
    with pytest.raises(ValueError, match="no --text_model_options"):
        text_step.demo_options()


def test_bad_text_model_options_fail_in_one_line():
    from iseg.cli.flags import CliError
    from iseg.cli.text import check_text_model
    from iseg.text.train import TextOptions

    for options, message in [(dict(classifier_units=-1), "classifier_units must be >= 0"),
                             (dict(focus="bad"), "focus must be one of"),
                             (dict(decoder_filter=8), "Unrecognized keyword arguments "
                                                      "passed to FACLSTM: {'decoder_filter'")]:
        with pytest.raises(CliError, match=f"^--text_model=faclstm --text_model_options: .*"
                                           f"{message}"):
            check_text_model(TextOptions(model_options=options), (32, 100))
    check_text_model(TextOptions(model_options=dict(classifier_units=8)), (32, 100))


def _evaluate(root, name, *flags):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run([sys.executable, "-m", "iseg.cli.evaluate",
                           f"--flagfile={root / name}.cfg", "--progress=false", *flags],
                          cwd=root, env=env, capture_output=True, text=True, timeout=600)


def test_text_evaluate_on_a_converted_split_and_a_label_file(tmp_path):
    """`iseg.cli.evaluate --task=text` restores the trained model: on a converted split it
    reproduces the end-of-training scores, on a label file the scores of the exported
    SavedModel's predictions; earlier results are kept; a missing split is one line."""
    import numpy as np
    import tensorflow as tf

    from iseg.text import metrics, synth

    _train(tmp_path, "faclstm_synth", steps=2)
    model_dir = tmp_path / "runs" / "faclstm_synth"
    fonts = synth.find_fonts()
    words, pngs = [], []
    (tmp_path / "words").mkdir()
    for i in range(5):
        word, png, _ = synth.render_example(7, i, fonts, synth.SynthOptions(max_length=5))
        (tmp_path / "words" / f"{i}.png").write_bytes(png)
        words.append(word)
        pngs.append(png)
    serve = tf.saved_model.load(str(model_dir / "export")).signatures["serve_encoded"]
    predicted = [w.decode() for w in serve(encoded=tf.constant(pngs))["words"].numpy()]
    if metrics.normalize_word(predicted[0]):
        words[0] = predicted[0]  # one word read right
    (tmp_path / "words" / "mine.txt").write_text(
        "".join(f"{i}.png\t{w}\n" for i, w in enumerate(words)))
    right = np.mean([metrics.normalize_word(p) == metrics.normalize_word(w)
                     for p, w in zip(predicted, words)])
    ned = np.mean([metrics.normalized_edit_distance(p, w) for p, w in zip(predicted, words)])

    r = _evaluate(tmp_path, "faclstm_synth", f"--split=test,{tmp_path / 'words' / 'mine.txt'}")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "test " in r.stdout and "mine " in r.stdout and "word accuracy" in r.stdout
    trained = json.loads((model_dir / "eval" / "text_results.json").read_text())
    test = json.loads((model_dir / "eval" / "text_test_step2_results.json").read_text())
    for key in ("num_images", "word_accuracy", "normalized_edit_distance"):
        assert test[key] == pytest.approx(trained["results"]["test"][key])
    mine = json.loads((model_dir / "eval" / "text_mine_step2_results.json").read_text())
    assert mine["num_images"] == 5 and mine["step"] == 2
    assert mine["word_accuracy"] == pytest.approx(right)
    assert mine["normalized_edit_distance"] == pytest.approx(ned)

    first = (model_dir / "eval" / "text_test_step2_results.json").read_text()
    assert _evaluate(tmp_path, "faclstm_synth", "--split=test").returncode == 0
    assert (model_dir / "eval" / "text_test_step2_results.json").read_text() == first
    assert (model_dir / "eval" / "text_test_step2-2_results.json").is_file()

    r = _evaluate(tmp_path, "faclstm_synth", "--split=nope")
    last = r.stderr.strip().splitlines()[-1]
    assert r.returncode == 1 and last.startswith("iseg.cli.evaluate: error: --split=nope: ")
    assert "no record files for split 'nope'" in last
