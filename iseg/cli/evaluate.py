"""`python -m iseg.cli.evaluate --flagfile=... [--checkpoint=...] [--split=val]`.

Rebuilds the model from the same flag files as training, restores the checkpoint (default:
the latest in --model_dir), runs whole-image or sliding-window inference with any scales
and flip, prints a table and writes `<model_dir>/eval/<split>_results.{json,txt}`
(optionally the confusion matrix and prediction PNGs).
"""

import os

from iseg.cli import flags as flags_lib

FLAGS = flags_lib.FLAGS
PROGRAM = "iseg.cli.evaluate"


def load_model_for_inference(cfg, checkpoint=None):
    """(model, meta) rebuilt from the config, weights from `checkpoint` or model_dir."""
    from iseg.training import config as config_lib
    from iseg.training.checkpoints import restore_model

    meta = config_lib.dataset_meta(cfg)
    model = config_lib.build_model_from_config(cfg, meta)
    restore_model(model, checkpoint or cfg.model_dir)
    return model, meta


def main(argv):
    from iseg.evaluation import write_results
    from iseg.training import config as config_lib
    from iseg.training.strategy import split_cpu
    from iseg.training.trainer import make_evaluator

    cfg = flags_lib.config_from_flags(argv)
    split_cpu(FLAGS.num_cpu_devices)
    split = FLAGS.split or cfg.eval_split
    model, meta = load_model_for_inference(cfg, FLAGS.checkpoint)
    normalization = getattr(model, "normalization", "minus_one_to_one")
    dataset = config_lib.make_eval_dataset(cfg, normalization, split)
    evaluator = make_evaluator(cfg, model, meta, normalization)
    out_dir = os.path.join(cfg.model_dir, "eval")
    pred_dir = os.path.join(out_dir, f"predictions_{split}") if FLAGS.save_predictions else None
    scores = evaluator.evaluate(dataset, max_batches=cfg.eval_steps, prediction_dir=pred_dir,
                                max_predictions=FLAGS.save_predictions, split=split)
    table = write_results(scores, out_dir, name=split, save_confusion=FLAGS.save_confusion)
    print(table)
    print(f"{split}: mIoU {scores['miou']:.4f}, pixel accuracy "
          f"{scores['pixel_accuracy']:.4f} ({scores['num_images']} images); results in "
          f"{out_dir}", flush=True)
    return scores


def run(argv=None):
    return flags_lib.run_cli(PROGRAM, flags_lib.define_eval_flags, main, argv)


if __name__ == "__main__":
    run()
