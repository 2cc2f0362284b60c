"""SavedModel export of a text recognizer; it loads and runs without iseg or Keras.

Signatures (both return `words` string `[N]` and `scores` float32 `[N]`, the probability of
each read word):

- `serving_default` / `serve_images`: `images` uint8 `[N, H, W, 3]`, any size;
- `serve_encoded`: `encoded` string `[N]` of PNG/JPEG/BMP/GIF bytes (sizes may differ).

Each image is resized and padded exactly as in training (`iseg.text.pipeline.prepare_image`).
`export.json` beside the SavedModel records the task, charset, input size and beam width.
"""

import json
import os

import tensorflow as tf

from iseg.datasets.tfrecord import decode_rgb
from iseg.export.saved_model import check_images, write_saved_model
from iseg.text.pipeline import prepare_image


class TextExportModule(tf.Module):
    def __init__(self, model, beam_width=1):
        super().__init__(name="text_recognizer")
        self.model = model
        self._beam_width = int(beam_width)
        self._chars = tf.constant(list(model.charset.chars))

    def _prepare(self, image):
        x, _, _ = prepare_image(image, self.model.image_size, self.model.channels)
        return x

    def _run(self, images):
        """Prepared images `[N, H, W, C]` -> words and scores."""
        tokens, scores = self.model.recognize(images, self._beam_width)
        tokens = tf.cast(tokens, tf.int32)
        chars = tf.gather(self._chars, tf.maximum(tokens - 1, 0))
        chars = tf.where(tokens > 0, chars, tf.constant(""))
        return {"words": tf.strings.reduce_join(chars, axis=1),
                "scores": tf.cast(scores, tf.float32)}

    def _spec(self):
        return tf.TensorSpec(tuple(self.model.image_size) + (self.model.channels,), tf.float32)

    @tf.function(input_signature=[tf.TensorSpec(None, tf.uint8, name="images")])
    def serve_images(self, images):
        return self._run(tf.map_fn(self._prepare, check_images(images),
                                   fn_output_signature=self._spec()))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="encoded")])
    def serve_encoded(self, encoded):
        return self._run(tf.map_fn(lambda data: self._prepare(decode_rgb(data)), encoded,
                                   fn_output_signature=self._spec()))


def export_text_model(model, output_dir, beam_width=None):
    """Write the SavedModel to `output_dir` (replaced atomically); returns the path."""
    beam_width = model.beam_width if beam_width is None else int(beam_width)
    meta = dict(task="text", model=type(model).__name__, charset=model.charset.chars,
                case_sensitive=model.charset.case_sensitive, image_size=list(model.image_size),
                channels=model.channels, max_length=model.max_length, beam_width=beam_width)
    return write_saved_model(TextExportModule(model, beam_width), output_dir, meta)


def is_text_export(path):
    """True for a folder written by `export_text_model`."""
    meta = os.path.join(path, "export.json")
    if not os.path.isfile(meta):
        return False
    with open(meta, encoding="utf-8") as f:
        return json.load(f).get("task") == "text"


def predict_folder(saved_model_dir, files, output_path, batch_size=32):
    """Read every image file with the SavedModel; writes `file<TAB>word<TAB>score` lines to
    `output_path` and returns [(file, word, score)]."""
    serve = tf.saved_model.load(saved_model_dir).signatures["serve_encoded"]
    rows = []
    for start in range(0, len(files), batch_size):
        chunk = files[start:start + batch_size]
        data = []
        for path in chunk:
            with open(path, "rb") as f:
                data.append(f.read())
        out = serve(encoded=tf.constant(data))
        for path, word, score in zip(chunk, out["words"].numpy(), out["scores"].numpy()):
            rows.append((path, word.decode("utf-8"), float(score)))
    os.makedirs(os.path.dirname(os.path.abspath(output_path)), exist_ok=True)
    with open(output_path, "w", encoding="utf-8") as f:
        for path, word, score in rows:
            f.write(f"{os.path.basename(path)}\t{word}\t{score:.4f}\n")
    return rows
