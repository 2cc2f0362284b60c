"""`python -m iseg.cli.predict --model=DIR_OR_CHECKPOINT --input=FOLDER --output=FOLDER`

`--model` may be a training model_dir, a checkpoint prefix inside one, a SavedModel folder
written by `iseg.cli.export`, or a `.keras` file. For every image in `--input` (png, jpg,
bmp) it writes `<name>.png` (palette PNG, pixel value = class id) and `<name>_overlay.jpg`
(colours blended on the image) to `--output`. `<name>` is the file name without its
extension, or with it (`a_jpg`) where two inputs share a name (`a.png`, `a.jpg`).
`--output` may not be `--input` or a folder inside it, and no input file is ever
overwritten. Images are decoded as training and the SavedModel's `serve_encoded` decode
them (TensorFlow's decoders; 16-bit PNGs are scaled to 8 bits); files that are not
readable images are reported and skipped. With the SavedModel of a text recognizer
(`iseg.text`) it writes `predictions.tsv` (`file<TAB>word<TAB>score`) instead.
"""

import glob
import json
import os
import re

import numpy as np
from absl import flags, logging

from iseg.cli import flags as flags_lib

FLAGS = flags.FLAGS
PROGRAM = "iseg.cli.predict"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")


def define_predict_flags():
    flags_lib.define_run_flags()
    flags_lib._group("Predict")
    d = flags_lib._define_once
    d("string", "model", None, "model_dir, checkpoint, SavedModel folder or .keras file.")
    d("string", "input", None, "Folder of images (or one image file).")
    d("string", "output", None, "Output folder.")
    d("list", "scales", ["1.0"], "Inference scales (model_dir / .keras only).")
    d("bool", "flip", False, "Flip averaging (model_dir / .keras only).")
    d("float", "alpha", 0.5, "Overlay opacity.")


class Predictor:
    """Label maps for uint8 RGB images from any of the supported model formats."""

    def __init__(self, path, scales=(1.0,), flip=False):
        import tensorflow as tf

        self.class_names, self.palette = None, None
        path = path.rstrip("/")
        if os.path.isfile(os.path.join(path, "saved_model.pb")):
            self._saved = tf.saved_model.load(path)
            self._fn = self._saved.signatures["serve_images"]
            meta = self._read_json(os.path.join(path, "export.json"))
            self.palette = meta.get("palette")
            self.class_names = meta.get("class_names")
            self.predict = lambda img: self._fn(images=tf.constant(img[None]))["labels"][0].numpy()
            return
        import iseg.backbones  # noqa: F401  (registers the Keras classes for loading)
        import iseg.heads  # noqa: F401
        import iseg.models  # noqa: F401

        if path.endswith(".keras"):
            import keras
            model = keras.saving.load_model(path)
            record = self._find_run_config(os.path.dirname(path))
        else:
            from iseg.semi.methods import weights_source
            from iseg.training.checkpoints import resolve_checkpoint, restore_model
            from iseg.training.config import read_run_config, rebuild_model

            ckpt = resolve_checkpoint(path)
            model_dir = os.path.dirname(os.path.dirname(ckpt))
            record = read_run_config(model_dir)
            model = rebuild_model(record)
            # a semi-supervised run with an EMA teacher: the teacher is the trained model
            restore_model(model, ckpt,
                          source=weights_source(record["config"].get("semi")))
        if record:
            self.palette = record["dataset"]["palette"]
            self.class_names = record["dataset"]["class_names"]
        from iseg.datasets.pipeline import input_normalization, normalize
        from iseg.evaluation import Evaluator

        norm = input_normalization(model)
        evaluator = Evaluator(model, model.num_classes, scales=scales, flip=flip,
                              align_corners=getattr(model, "align_corners", True))
        self.predict = lambda img: evaluator.predict(
            normalize(img[None], norm)).numpy()[0]
        if self.palette is None:
            from iseg.datasets.specs import voc_colormap
            self.palette = voc_colormap(model.num_classes)

    @staticmethod
    def _read_json(path):
        if not os.path.isfile(path):
            return {}
        with open(path, encoding="utf-8") as f:
            return json.load(f)

    def _find_run_config(self, folder):
        rc = self._read_json(os.path.join(folder, "run_config.json"))
        return rc or None


def list_images(path):
    if os.path.isfile(path):
        return [path]
    if not os.path.isdir(path):
        raise FileNotFoundError(f"--input {path} does not exist")
    files = sorted(f for f in glob.glob(os.path.join(path, "*"))
                   if f.lower().endswith(IMAGE_EXTENSIONS))
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {path}")
    return files


def output_names(files):
    """A distinct output name per input file: its name without the extension, or with it
    (`a_jpg`) where inputs share a name (`a.png`, `a.jpg`)."""
    stems = [os.path.splitext(os.path.basename(f))[0] for f in files]
    names, taken = [], set()
    for f, stem in zip(files, stems):
        name = stem
        if stems.count(stem) > 1:
            name = f"{stem}_{os.path.splitext(f)[1].lstrip('.')}"
        base, n = name, 1
        while name.lower() in taken:  # distinct on case-insensitive file systems too
            n += 1
            name = f"{base}_{n}"
        taken.add(name.lower())
        names.append(name)
    return names


def output_paths(output_dir, name):
    """(label map, overlay) paths of one output name."""
    return (os.path.join(output_dir, name + ".png"),
            os.path.join(output_dir, name + "_overlay.jpg"))


def check_output_folder(input_path, output_dir, files, names):
    """Refuse an output folder equal to or inside the input folder, and any output path
    that is an input file."""
    from iseg.errors import ConfigError

    inp, out = os.path.realpath(input_path), os.path.realpath(output_dir)
    if os.path.isdir(inp) and (out == inp or out.startswith(inp.rstrip(os.sep) + os.sep)):
        where = "is" if out == inp else "is inside"
        raise ConfigError(f"--output={output_dir} {where} --input={input_path}: the "
                          "predictions would mix with (and could overwrite) the input "
                          "images; choose another --output folder")
    inputs = {os.path.realpath(f) for f in files}
    for name in names:
        for path in output_paths(output_dir, name):
            if os.path.realpath(path) in inputs:
                raise ConfigError(f"--output={output_dir}: writing {path} would overwrite "
                                  "an input image; choose another --output folder")


def read_image(path):
    """uint8 RGB `[H, W, 3]` of an image file, decoded as the training input and the
    SavedModel's `serve_encoded` decode it. ValueError naming the file if it is not a
    readable image."""
    import tensorflow as tf

    from iseg.datasets.tfrecord import decode_rgb

    with open(path, "rb") as f:
        data = f.read()
    try:
        return decode_rgb(tf.constant(data)).numpy()
    except tf.errors.InvalidArgumentError as e:
        # "{{function_node ...}} Unknown image file format. ... [Op:DecodeImage]" -> the text
        reason = re.sub(r"\{\{.*?\}\}", "", e.message or "").split("[Op:")[0].strip()
        raise ValueError(f"{path}: not a readable image ({reason or 'cannot decode'})") \
            from None


def predict_folder(predictor, input_path, output_dir, alpha=0.5, progress=True,
                   skipped=None):
    """Predict every image of `input_path`; returns the output names actually written.
    Files that are not readable images are logged and skipped; `skipped` (a list), if
    given, receives their `(path, reason)`."""
    from PIL import Image

    from iseg.evaluation.visualize import overlay, save_label_png
    from iseg.progress import progress_bar

    files = list_images(input_path)
    names = output_names(files)
    check_output_folder(input_path, output_dir, files, names)
    os.makedirs(output_dir, exist_ok=True)
    palette = predictor.palette
    written = []
    for f, name in progress_bar(list(zip(files, names)), desc="predicting",
                                enabled=progress):
        try:
            image = read_image(f)
        except ValueError as e:
            logging.info("skipped %s", e)
            if skipped is not None:
                skipped.append((f, str(e)))
            continue
        labels = predictor.predict(image)
        label_path, overlay_path = output_paths(output_dir, name)
        save_label_png(label_path, labels, palette)
        Image.fromarray(overlay(image, labels, palette, alpha)).save(overlay_path, quality=92)
        written.append(name)
    return written


def write_overlays_from_dataset(cfg, model, meta, output_dir, count):
    """Overlays (image | ground truth | prediction) of the first `count` eval images."""
    from iseg.datasets.pipeline import denormalize, input_normalization
    from iseg.evaluation import make_evaluator
    from iseg.evaluation.visualize import save_overlay
    from iseg.training import config as config_lib

    norm = input_normalization(model)
    evaluator = make_evaluator(cfg, model, meta)
    n = 0
    for features, labels in config_lib.make_eval_dataset(cfg, norm):
        preds = evaluator.predict(features["image"]).numpy()
        images = np.clip(denormalize(features["image"], norm).numpy(), 0, 255).astype(np.uint8)
        for i in range(preds.shape[0]):
            h, w = int(features["height"][i]), int(features["width"][i])
            save_overlay(output_dir, n, images[i, :h, :w], labels.numpy()[i, :h, :w],
                         preds[i, :h, :w], meta.palette)
            n += 1
            if n >= count:
                return n
    return n


def main(_):
    for name in ("model", "input", "output"):
        if not FLAGS[name].value:
            raise flags_lib.CliError(f"--{name} is required")
    from iseg.text.export import is_text_export
    if is_text_export(FLAGS.model):  # a text recognizer: one line per image
        from iseg.text.export import predict_folder as predict_text
        out = os.path.join(FLAGS.output, "predictions.tsv")
        rows = predict_text(FLAGS.model, list_images(FLAGS.input), out)
        print(f"{len(rows)} words written to {out}", flush=True)
        return rows
    predictor = Predictor(FLAGS.model, scales=[float(s) for s in FLAGS.scales],
                          flip=FLAGS.flip)
    skipped = []
    written = predict_folder(predictor, FLAGS.input, FLAGS.output, FLAGS.alpha,
                             progress=FLAGS.progress, skipped=skipped)
    print(f"{len(written)} predictions written to {FLAGS.output}", flush=True)
    if skipped:
        print(f"skipped {len(skipped)} file(s) that are not readable images:\n" + "\n".join(
            f"  {reason}" for _, reason in skipped), flush=True)
    return written


def run(argv=None):
    return flags_lib.run_cli(PROGRAM, define_predict_flags, main, argv, logging.WARNING,
                             doc=__doc__, help_groups=("General", "Predict"))


if __name__ == "__main__":
    run()
