"""The text-recognition flags and the `--task=text` branch of `train.py`.

    python train.py --flagfile=configs/text/faclstm_synth.cfg

The engine flags (batch size, optimizer, schedule, steps, checkpoints, strategy, model_dir,
data_dir, crop_size = the model's input height,width) mean what they mean for segmentation;
the flags below add the text model and data. `--dataset=text_synth` renders the synthetic
splits into `--data_dir` when they are absent.
"""

import os

from absl import logging

from iseg.cli import flags as flags_lib

FLAGS = flags_lib.FLAGS


TEXT_GROUPS = ("Text recognition",)


def define_text_flags():
    flags_lib._group(TEXT_GROUPS[0])  # pylint: disable=protected-access
    d = flags_lib._define_once  # pylint: disable=protected-access
    d("enum", "task", "segmentation", ["segmentation", "text"],
      "What train.py trains: a segmentation model or a text recognizer (iseg.text).")
    d("enum", "text_model", "faclstm", ["faclstm", "crnn"], "Text recognizer.")
    d("string", "text_model_options", "", "Text model options, key=value,... (Python "
      "literals), e.g. decoder_filters=32,encoder='resnet'.")
    d("string", "charset", None, "Characters the model reads (default: 0-9a-z).")
    d("bool", "case_sensitive", False, "Case-sensitive charset (default: words lower-cased).")
    d("integer", "max_length", 25, "Longest word (characters) the model reads.")
    d("integer", "text_channels", 1, "Input channels of the text model: 1 (grey) or 3.")
    d("integer", "beam_width", 1, "Beam width of decoding (1: greedy).")
    d("float", "mask_shrink", 0.5, "Character-centre masks: box fraction around the centre.")
    d("list", "text_eval_splits", ["test"], "Splits evaluated after training.")
    d("integer", "synth_train", 30000, "text_synth: training images.")
    d("integer", "synth_test", 1000, "text_synth: images of each test split (test = "
      "straight words, test_curved = curved words).")
    d("float", "synth_curved", 0.25, "text_synth: fraction of curved training words.")
    d("integer", "synth_workers", 2, "text_synth: rendering processes.")


def check_text_data():
    """Fail fast (before TensorFlow is imported) when the text data is missing."""
    from iseg.datasets import info  # pylint: disable=import-outside-toplevel
    from iseg.text.records import INFO_FILE  # pylint: disable=import-outside-toplevel

    path = flags_lib.resolved_data_dir()
    if not path:
        raise flags_lib.CliError("--task=text needs --data_dir")
    if FLAGS.dataset == "text_synth" and not os.path.exists(os.path.join(path, INFO_FILE)):
        return  # train.py renders it
    if not os.path.isfile(os.path.join(path, INFO_FILE)):
        raise flags_lib.CliError(
            f"no {INFO_FILE} in --data_dir={path}: convert the text dataset first "
            "(python -m iseg.cli.convert --dataset=text_lmdb or text_folder), or use "
            "--dataset=text_synth")
    splits = ["train"] + (list(FLAGS.text_eval_splits) if FLAGS.evaluate_at_end else [])
    for split in splits:
        try:
            info.list_shards(path, split)
        except (FileNotFoundError, ValueError) as e:
            raise flags_lib.CliError(str(e)) from None


def eval_entries():
    """What `evaluate --task=text` reads: --split (comma-separated) or --text_eval_splits;
    each entry an LMDB folder or label file, else a split of --data_dir."""
    entries = FLAGS.split.split(",") if FLAGS.split else list(FLAGS.text_eval_splits)
    return [e for e in entries if e]


def check_text_eval():
    """Fail fast when a source of `evaluate --task=text` is missing."""
    from iseg.datasets import info  # pylint: disable=import-outside-toplevel
    from iseg.text.records import INFO_FILE  # pylint: disable=import-outside-toplevel
    from iseg.text.train import is_text_source  # pylint: disable=import-outside-toplevel

    entries = eval_entries()
    if not entries:
        raise flags_lib.CliError("evaluate --task=text: no --split or --text_eval_splits")
    path = flags_lib.resolved_data_dir()
    for entry in entries:
        if is_text_source(entry):
            continue
        if not path or not os.path.isfile(os.path.join(path, INFO_FILE)):
            raise flags_lib.CliError(
                f"--split={entry}: not an LMDB folder or label file, and --data_dir={path} "
                f"has no {INFO_FILE} (convert the text dataset first)")
        try:
            info.list_shards(path, entry)
        except (FileNotFoundError, ValueError) as e:
            raise flags_lib.CliError(f"--split={entry}: {e}") from None


def score_line(name, scores):
    return (f"{name:<14} ({scores['num_images']} images)  word accuracy "
            f"{100 * scores['word_accuracy']:.2f} %  normalised edit distance "
            f"{scores['normalized_edit_distance']:.4f}")


def evaluate_main(cfg, step_of):
    """`python -m iseg.cli.evaluate --task=text`: word accuracy and normalised edit
    distance per source; `<model_dir>/eval/text_<source>_step<N>[_beam<k>]_results.json`
    (never replacing earlier results). `step_of(path)`: a checkpoint's step."""
    import json  # pylint: disable=import-outside-toplevel

    from iseg.evaluation.results import _free_name  # pylint: disable=import-outside-toplevel
    from iseg.text import train  # pylint: disable=import-outside-toplevel

    model, path = train.load_text_model(FLAGS.checkpoint or cfg.model_dir, text_options(),
                                        cfg.crop_size)
    step = step_of(path)
    out_dir = os.path.join(cfg.model_dir, "eval")
    os.makedirs(out_dir, exist_ok=True)
    results = {}
    for entry in eval_entries():
        name = train.source_name(entry) if train.is_text_source(entry) else entry
        dataset = train.open_eval_dataset(model, entry, cfg.data_dir,
                                          max(FLAGS.eval_batch_size, 1))
        scores = train.evaluate_text(model, dataset, beam_width=FLAGS.beam_width,
                                     max_batches=cfg.eval_steps)
        scores = dict({k: v for k, v in scores.items() if k != "samples"}, source=entry,
                      step=step, beam_width=FLAGS.beam_width, checkpoint=path)
        tags = ("" if step is None else f"_step{step}") + (
            f"_beam{FLAGS.beam_width}" if FLAGS.beam_width > 1 else "")
        file_name = _free_name(out_dir, f"text_{name}{tags}") + "_results.json"
        with open(os.path.join(out_dir, file_name), "w", encoding="utf-8") as f:
            json.dump(scores, f, indent=1)
        print(f"{score_line(name, scores)}  -> {file_name}", flush=True)
        results[name] = scores
    return results


def text_options():
    from iseg.text.charset import ALPHANUMERIC  # pylint: disable=import-outside-toplevel
    from iseg.text.train import TextOptions  # pylint: disable=import-outside-toplevel

    return TextOptions(
        model=FLAGS.text_model,
        model_options=flags_lib.parse_options(FLAGS.text_model_options, "text_model_options"),
        charset=FLAGS.charset or ALPHANUMERIC, case_sensitive=FLAGS.case_sensitive,
        max_length=FLAGS.max_length, channels=FLAGS.text_channels,
        beam_width=FLAGS.beam_width, mask_shrink=FLAGS.mask_shrink,
        eval_splits=tuple(FLAGS.text_eval_splits), eval_batch_size=max(FLAGS.eval_batch_size,
                                                                       32))


def prepare_synth(cfg, text):
    """Render the synthetic splits into cfg.data_dir unless they are there."""
    from iseg.text import records, synth  # pylint: disable=import-outside-toplevel

    if cfg.dataset != "text_synth" or os.path.isfile(
            os.path.join(cfg.data_dir, records.INFO_FILE)):
        return
    print(f"Rendering the synthetic text dataset in {cfg.data_dir} ...", flush=True)
    options = synth.SynthOptions(chars=text.charset, max_length=text.max_length,
                                 curved=FLAGS.synth_curved)
    records.generate_synth(cfg.data_dir, {"train": (FLAGS.synth_train, None),
                                          "test": (FLAGS.synth_test, 0.0),
                                          "test_curved": (FLAGS.synth_test, 1.0)},
                           options=options, seed=cfg.seed, num_workers=FLAGS.synth_workers)


def check_text_model(text, image_size):
    """Fail fast, in one line, when --text_model_options do not make a model."""
    from iseg.text.train import make_model_fn  # pylint: disable=import-outside-toplevel

    try:
        make_model_fn(text, image_size)()
    except (TypeError, ValueError) as e:
        raise flags_lib.CliError(f"--text_model={text.model} --text_model_options: {e}") \
            from None


def _after_training(cfg):
    def fn(model, result):
        from iseg.export import save_keras  # pylint: disable=import-outside-toplevel
        from iseg.text.export import export_text_model  # pylint: disable=import-outside-toplevel

        if cfg.export_at_end:
            path = export_text_model(model, os.path.join(cfg.model_dir, "export"))
            save_keras(model, os.path.join(cfg.model_dir, "model.keras"))
            print(f"SavedModel: {path}", flush=True)
    return fn


def main(cfg):
    """Train a text recognizer (`cfg`: the engine's TrainConfig from the flags)."""
    from iseg.text.train import train_text  # pylint: disable=import-outside-toplevel

    text = text_options()
    check_text_model(text, cfg.crop_size)
    prepare_synth(cfg, text)
    result = train_text(cfg, text, after_training=_after_training(cfg))
    if result["is_chief"]:
        for split, s in (result["text_scores"] or {}).items():
            print(score_line(split, s), flush=True)
        print(f"Done: {result['step']} steps, model_dir {cfg.model_dir}", flush=True)
        logging.info("text training finished at step %d", result["step"])
    return result

