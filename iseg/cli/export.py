"""`python -m iseg.cli.export --flagfile=... --output=DIR [--export_scales] [--export_flip]`

Writes a SavedModel (uint8 image batch and encoded-bytes signatures returning label map and
class probabilities) and `<output>/model.keras`.
"""

import os

from iseg.cli import flags as flags_lib

FLAGS = flags_lib.FLAGS
PROGRAM = "iseg.cli.export"


def main(argv):
    from iseg.cli.evaluate import load_model_for_inference
    from iseg.export import export_saved_model, save_keras
    from iseg.progress import progress_bar

    cfg = flags_lib.config_from_flags(argv)
    model, meta = load_model_for_inference(cfg, cfg.checkpoint)
    output = FLAGS.output or os.path.join(cfg.model_dir, "export")
    with progress_bar(total=2, desc="exporting", unit=" files", enabled=cfg.progress) as bar:
        path = export_saved_model(model, output, scales=[float(s) for s in FLAGS.export_scales],
                                  flip=FLAGS.export_flip, class_names=meta.class_names,
                                  palette=meta.palette)
        bar.update(1)
        keras_path = save_keras(model, os.path.join(path, "model.keras"))
        bar.update(1)
    print(f"SavedModel: {path}\nKeras model: {keras_path}", flush=True)
    return path


def run(argv=None):
    return flags_lib.run_cli(PROGRAM, flags_lib.define_export_flags, main, argv, doc=__doc__,
                             help_groups=("General", "Model", "Data and augmentation", "Export"))


if __name__ == "__main__":
    run()
