"""`python train.py --flagfile=configs/...cfg` (also `iseg-train`): train, then evaluate,
and optionally export and write prediction overlays; everything goes under --model_dir."""

import json
import os

from iseg.cli import flags as flags_lib

FLAGS = flags_lib.FLAGS
PROGRAM = "train.py"


def keras_backend():
    """The Keras backend this process will use, read as Keras reads it (KERAS_BACKEND, else
    keras.json in KERAS_HOME or ~/.keras, else tensorflow) without importing Keras."""
    if os.environ.get("KERAS_BACKEND"):
        return os.environ["KERAS_BACKEND"]
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    try:
        with open(os.path.join(home, "keras.json"), encoding="utf-8") as f:
            return json.load(f).get("backend", "tensorflow")
    except (OSError, ValueError):
        return "tensorflow"


def engine():
    """"fit" or "loop": --engine, with "auto" meaning loop on the TensorFlow backend."""
    backend = keras_backend()
    if FLAGS.engine == "loop" and backend != "tensorflow":
        raise flags_lib.CliError(f"--engine=loop needs the TensorFlow backend (KERAS_BACKEND "
                                 f"is {backend}); use --engine=fit or auto")
    if FLAGS.engine == "auto":
        return "loop" if backend == "tensorflow" else "fit"
    return FLAGS.engine


def _prepare_data(cfg, writer="auto"):
    if cfg.dataset == "shapes" and cfg.data_dir and not os.path.isfile(
            os.path.join(cfg.data_dir, "dataset_info.json")):
        from iseg.datasets.synthetic import ensure_shapes
        print(f"Generating the synthetic shapes dataset in {cfg.data_dir} ...", flush=True)
        ensure_shapes(cfg.data_dir, writer=writer)


def after_training(cfg, meta, fit=False):
    def fn(model, result):
        from iseg.export import save_keras

        if cfg.export_at_end and fit:
            print("SavedModel: not written by the fit engine (it needs TensorFlow: run "
                  f"python -m iseg.cli.export --model_dir={cfg.model_dir} on the TensorFlow "
                  "backend)", flush=True)
        elif cfg.export_at_end:
            from iseg.export import export_saved_model
            path = export_saved_model(model, os.path.join(cfg.model_dir, "export"),
                                      class_names=meta.class_names, palette=meta.palette)
            print(f"SavedModel: {path}", flush=True)
        if cfg.export_at_end:
            path = save_keras(model, os.path.join(cfg.model_dir, "model.keras"))
            print(f"Keras model: {path}", flush=True)
        if cfg.overlays_at_end:
            out = os.path.join(cfg.model_dir, "overlays")
            if fit:
                from iseg.training.fit import write_overlays as write
            else:
                from iseg.cli.predict import write_overlays_from_dataset as write
            write(cfg, model, meta, out, cfg.overlays_at_end)
            print(f"Overlays: {out}", flush=True)
    return fn


def main(argv):
    from iseg.training import config as config_lib

    cfg = flags_lib.config_from_flags(argv)
    if FLAGS.task != "text" and engine() == "fit":
        from iseg.training import fit
        if FLAGS.num_cpu_devices:
            raise flags_lib.CliError(f"--num_cpu_devices={FLAGS.num_cpu_devices} is not "
                                     "supported by the fit engine (a TensorFlow setting)")
        _prepare_data(cfg, writer="python")
        meta = config_lib.dataset_meta(cfg)
        return _report(cfg, fit.train(cfg, meta, after_training(cfg, meta, fit=True)))
    from iseg.training.strategy import split_cpu
    from iseg.training.trainer import train

    split_cpu(FLAGS.num_cpu_devices)
    if FLAGS.task == "text":
        from iseg.cli import text
        return text.main(cfg)
    _prepare_data(cfg)
    meta = config_lib.dataset_meta(cfg)
    return _report(cfg, train(cfg, meta=meta, after_training=after_training(cfg, meta)))


def _report(cfg, result):
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
                             help_groups=flags_lib.TRAIN_GROUPS + TEXT_GROUPS, check=check,
                             uses_tensorflow=lambda: FLAGS.task == "text" or engine() == "loop")


if __name__ == "__main__":
    run()
