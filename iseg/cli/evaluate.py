"""`python -m iseg.cli.evaluate --flagfile=... [--checkpoint=...] [--split=val]`.

With `--task=text` (the text configs set it) it evaluates a text recognizer instead:
word accuracy and normalised edit distance for each entry of `--split` (comma-separated)
or `--text_eval_splits`, an entry being a split of the converted `--data_dir`, an LMDB
folder or a `path<TAB>word` label file; results in `<model_dir>/eval/text_<name>_step<N>
[_beam<k>]_results.json`.

Rebuilds the model from the same flag files as training, restores the checkpoint (default:
the latest in --model_dir), runs whole-image or sliding-window inference with any scales
and flip, prints a table and writes `<model_dir>/eval/<name>_results.{json,txt}`
(optionally the confusion matrix and prediction PNGs), where `<name>` says what was
evaluated: `<split>_<whole|slide>[_scales0.5-...][_flip]_step<N>` (N: the checkpoint's
step). Earlier results are never replaced (a repeated name gets `-2`, `-3`...). A
semi-supervised run with an EMA teacher is evaluated with the teacher, as training does;
`--semi_weights=student` evaluates its student instead (results in `<model_dir>/eval_student`).
"""

import os

from iseg.cli import flags as flags_lib

FLAGS = flags_lib.FLAGS
PROGRAM = "iseg.cli.evaluate"


#: The config fields that decide the network (the weight file only decides it through the
#: layout recorded in run_config.json).
MODEL_FIELDS = ("model", "head", "backbone", "backbone_options", "head_options", "aux_weight",
                "aux_options", "car", "car_options", "sar", "sar_options")


def _recorded_model(cfg, run_dir):
    """The model of `<run_dir>/run_config.json` when the config's model flags are the
    recorded ones, else None (the flags then ask for another network)."""
    import dataclasses
    import json

    from absl import logging

    from iseg.training import config as config_lib

    if not os.path.isfile(os.path.join(run_dir, "run_config.json")):
        return None
    record = config_lib.read_run_config(run_dir)
    ours = json.loads(json.dumps(dataclasses.asdict(cfg), default=list))
    changed = [k for k in MODEL_FIELDS if ours.get(k) != record["config"].get(k)]
    if changed:
        logging.info("Model flags %s differ from %s/run_config.json: model built from the "
                     "flags", ", ".join(changed), run_dir)
        return None
    return config_lib.rebuild_model(record)


def load_model_for_inference(cfg, checkpoint=None, weights="auto"):
    """(model, meta), weights from `checkpoint` or the latest in model_dir. The model is
    the trained network recorded in the checkpoint's `run_config.json` (no backbone weight
    file needed) unless the model flags differ from the recorded ones; then, and without a
    record, it is built from the flags. `weights`: "auto" gives the EMA teacher's weights
    for a semi-supervised method that has one (what training evaluates and exports), else
    the model's; "student" / "teacher" ask for one."""
    from iseg.semi.methods import weights_source
    from iseg.training import config as config_lib
    from iseg.training.checkpoints import resolve_checkpoint, restore_model

    meta = config_lib.dataset_meta(cfg)
    path = resolve_checkpoint(checkpoint or cfg.model_dir)
    model = _recorded_model(cfg, os.path.dirname(os.path.dirname(path)))
    if model is None:
        model = config_lib.build_model_from_config(cfg, meta)
    source = {"auto": weights_source(cfg.semi), "student": "model"}.get(weights, weights)
    restore_model(model, path, source=source)
    return model, meta


def checkpoint_step(path):
    """The step of a `.../ckpt-N` checkpoint prefix (None for other names)."""
    tail = os.path.basename(path or "").rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else None


def main(argv):
    from iseg.datasets import info
    from iseg.datasets.pipeline import input_normalization
    from iseg.evaluation import make_evaluator, write_results
    from iseg.metrics import format_results_table
    from iseg.training import config as config_lib
    from iseg.training.checkpoints import resolve_checkpoint
    from iseg.training.strategy import split_cpu

    cfg = flags_lib.config_from_flags(argv)
    split_cpu(FLAGS.num_cpu_devices)
    if FLAGS.task == "text":
        from iseg.cli import text
        return text.evaluate_main(cfg, checkpoint_step)
    split = FLAGS.split or cfg.eval_split
    model, meta = load_model_for_inference(cfg, cfg.checkpoint, FLAGS.semi_weights)
    dataset = config_lib.make_eval_dataset(cfg, input_normalization(model), split)
    evaluator = make_evaluator(cfg, model, meta)
    out_dir = os.path.join(cfg.model_dir,
                           "eval_student" if FLAGS.semi_weights == "student" else "eval")
    pred_dir = os.path.join(out_dir, f"predictions_{split}") if FLAGS.save_predictions else None
    total = info.num_examples(cfg.data_dir, split)
    if total is not None and cfg.eval_steps is not None:
        total = min(total, cfg.eval_steps * cfg.eval_batch_size)
    scores = evaluator.evaluate(dataset, max_batches=cfg.eval_steps, prediction_dir=pred_dir,
                                max_predictions=FLAGS.save_predictions, split=split,
                                progress=cfg.progress, total_images=total)
    step = checkpoint_step(resolve_checkpoint(FLAGS.checkpoint or cfg.model_dir))
    path = write_results(scores, out_dir, save_confusion=FLAGS.save_confusion, step=step)
    print(format_results_table(scores, title=f"{split} ({scores['num_images']} images)"))
    print(f"{split}: mIoU {scores['miou']:.4f}, pixel accuracy "
          f"{scores['pixel_accuracy']:.4f} ({scores['num_images']} images); results in "
          f"{path}", flush=True)
    return scores


def check():
    if FLAGS.task == "text":
        from iseg.cli.text import check_text_eval
        return check_text_eval()
    if FLAGS.semi_weights == "teacher":
        from iseg.semi.methods import weights_source

        if weights_source(FLAGS.semi) != "teacher":
            raise flags_lib.CliError(f"--semi_weights=teacher: --semi={FLAGS.semi} has no "
                                     "EMA teacher (its checkpoints hold the student only)")
    return flags_lib.check_data([FLAGS.split or FLAGS.eval_split])


def define_flags():
    from iseg.cli.text import define_text_flags

    flags_lib.define_eval_flags()
    define_text_flags()


def run(argv=None):
    from iseg.cli.text import TEXT_GROUPS

    return flags_lib.run_cli(
        PROGRAM, define_flags, main, argv, doc=__doc__, check=check,
        help_groups=("General", "Model", "Data and augmentation", "Evaluation", "Evaluate")
        + TEXT_GROUPS)


if __name__ == "__main__":
    run()
