"""`python train.py --flagfile=configs/...cfg` (also `iseg-train`): train, then evaluate,
and optionally export and write prediction overlays; everything goes under --model_dir."""

import os

from iseg.cli import flags as flags_lib

FLAGS = flags_lib.FLAGS
PROGRAM = "train.py"


def _prepare_data(cfg):
    if cfg.dataset == "shapes" and cfg.data_dir and not os.path.isfile(
            os.path.join(cfg.data_dir, "dataset_info.json")):
        from iseg.datasets.synthetic import ensure_shapes
        print(f"Generating the synthetic shapes dataset in {cfg.data_dir} ...", flush=True)
        ensure_shapes(cfg.data_dir)


def after_training(cfg, meta):
    def fn(model, result):
        from iseg.cli.predict import write_overlays_from_dataset
        from iseg.export import export_saved_model, save_keras

        if cfg.export_at_end:
            path = export_saved_model(model, os.path.join(cfg.model_dir, "export"),
                                      class_names=meta.class_names, palette=meta.palette)
            save_keras(model, os.path.join(cfg.model_dir, "model.keras"))
            print(f"SavedModel: {path}\nKeras model: "
                  f"{os.path.join(cfg.model_dir, 'model.keras')}", flush=True)
        if cfg.overlays_at_end:
            out = os.path.join(cfg.model_dir, "overlays")
            write_overlays_from_dataset(cfg, model, meta, out, cfg.overlays_at_end)
            print(f"Overlays: {out}", flush=True)
    return fn


def main(argv):
    from iseg.training import config as config_lib
    from iseg.training.strategy import split_cpu
    from iseg.training.trainer import train

    cfg = flags_lib.config_from_flags(argv)
    split_cpu(FLAGS.num_cpu_devices)
    if FLAGS.task == "text":
        from iseg.cli import text
        return text.main(cfg)
    _prepare_data(cfg)
    meta = config_lib.dataset_meta(cfg)
    result = train(cfg, meta=meta, after_training=after_training(cfg, meta))
    if result["is_chief"]:
        scores = result["scores"]
        line = f"Done: {result['step']} steps, model_dir {cfg.model_dir}"
        if scores is not None:
            from iseg.metrics import format_results_table
            print(format_results_table(scores, title=f"{cfg.eval_split} "
                                       f"({scores['num_images']} images)"))
            line += f", {cfg.eval_split} mIoU {scores['miou']:.4f}"
        print(line, flush=True)
    return result


def check():
    """Fail before TensorFlow is imported and before anything is written."""
    if FLAGS.task == "text":
        from iseg.cli.text import check_text_data
        return check_text_data()
    return flags_lib.check_data(["train"] + ([FLAGS.eval_split] if FLAGS.evaluate_at_end
                                             else []))


def define_flags():
    from iseg.cli.text import define_text_flags

    flags_lib.define_train_flags()
    define_text_flags()


def run(argv=None):
    from iseg.cli.text import TEXT_GROUPS

    return flags_lib.run_cli(PROGRAM, define_flags, main, argv, doc=__doc__,
                             help_groups=flags_lib.TRAIN_GROUPS + TEXT_GROUPS, check=check)


if __name__ == "__main__":
    run()
