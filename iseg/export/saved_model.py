"""SavedModel export with serving signatures that need no iseg code to load.

Signatures (both return `labels` int32 `[N, H, W]` and `probabilities` float32
`[N, H, W, K]` at the input size):

- `serving_default` / `serve_images`: `images` uint8 `[N, H, W, 3]`, any size;
- `serve_encoded`: `encoded` string `[N]` of JPEG/PNG/BMP/GIF bytes (decoded to RGB; the
  images of one call must share a size).

A loaded signature does not check shapes (nor does TF Serving), so the graph does: a batch
of another rank, another channel count, no images or an empty (0-pixel) image fails with an
`InvalidArgumentError` saying so. (`images` is declared with an unknown shape so that these
checks are not folded away at export.)

Normalisation, multi-scale and flip averaging (of logits) are baked into the graph.
`export.json` beside the SavedModel records classes, palette and settings.
"""

import json
import os

import tensorflow as tf
from absl import logging

from iseg.datasets.pipeline import input_normalization, normalize
from iseg.datasets.tfrecord import decode_rgb
from iseg.export.keras_file import save_keras  # noqa: F401  (re-exported)
from iseg.evaluation.inference import predict_logits


class SegmentationExportModule(tf.Module):
    def __init__(self, model, *, normalization, scales=(1.0,), flip=False,
                 align_corners=True):
        super().__init__(name="segmentation")
        # Only the inference network is tracked (and so saved): the backbone, the neck (if
        # any) and the head.
        # Training-only parts of the model (aux head, CAR loss buffers, SAR anchors and
        # projector, loss trackers) stay out of the SavedModel; the model itself is held in
        # a closure, which tf.Module does not track.
        if hasattr(model, "backbone") and hasattr(model, "head"):
            self.backbone = model.backbone
            self.head = model.head
            if getattr(model, "neck", None) is not None:
                self.neck = model.neck
        else:  # another Keras model (no training-only parts known): saved whole
            self.model = model
        self._predict = lambda t: model(t, training=False)
        self._normalization = normalization
        self._scales = tuple(float(s) for s in scales)
        self._flip = bool(flip)
        self._align_corners = bool(align_corners)

    def _run(self, images):
        x = normalize(check_images(images), self._normalization)
        logits = predict_logits(self._predict, x,
                                scales=self._scales, flip=self._flip,
                                align_corners=self._align_corners)
        return {"labels": tf.argmax(logits, axis=-1, output_type=tf.int32),
                "probabilities": tf.nn.softmax(logits, axis=-1)}

    @tf.function(input_signature=[tf.TensorSpec(None, tf.uint8, name="images")])
    def serve_images(self, images):
        return self._run(images)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="encoded")])
    def serve_encoded(self, encoded):
        check = tf.debugging.Assert(tf.size(encoded) > 0, [
            "encoded must hold at least one image; got an empty batch"])
        with tf.control_dependencies([check]):
            encoded = tf.identity(encoded)
        images = tf.map_fn(decode_rgb, encoded,
                           fn_output_signature=tf.TensorSpec([None, None, 3], tf.uint8))
        return self._run(images)


def check_images(images):
    """`images` with static shape `[N, H, W, 3]` once the graph has checked that it is a
    non-empty batch of non-empty RGB images (else InvalidArgumentError saying what is
    wrong and the shape)."""
    shape = tf.shape(images)
    dims = tf.concat([shape, tf.ones([4], tf.int32)], 0)[:4]  # indexable at any rank
    problems = [(tf.rank(images) != 4, "a batch of rank other than 4"),
                (dims[3] != 3, "a channel count other than 3"),
                (dims[0] == 0, "an empty batch"),
                (tf.reduce_any(dims[1:3] == 0), "an empty (0-pixel) image")]
    reason = tf.constant("")
    for bad, text in reversed(problems):
        reason = tf.where(bad, text, reason)
    check = tf.debugging.Assert(
        tf.equal(reason, ""),
        ["images must be uint8 [N, H, W, 3] with N, H, W > 0; got", reason,
         "of shape", shape], summarize=8)
    with tf.control_dependencies([check]):
        images = tf.identity(images)
    # set_shape, not ensure_shape: graph optimisation would infer the rank from an
    # EnsureShape op and fold the rank check away
    images.set_shape([None, None, None, 3])
    return images


def export_saved_model(model, output_dir, *, normalization=None, scales=(1.0,), flip=False,
                       align_corners=None, class_names=None, palette=None):
    """Write the SavedModel to `output_dir` (replaced atomically) and return the path."""
    normalization = normalization or input_normalization(model)
    if align_corners is None:
        align_corners = getattr(model, "align_corners", True)
    module = SegmentationExportModule(model, normalization=normalization, scales=scales,
                                      flip=flip, align_corners=align_corners)
    meta = dict(num_classes=int(model.num_classes) if hasattr(model, "num_classes") else None,
                class_names=list(class_names) if class_names else None,
                palette=[list(map(int, c)) for c in palette] if palette is not None else None,
                normalization=normalization, scales=list(module._scales), flip=flip,
                align_corners=align_corners)
    return write_saved_model(module, output_dir, meta)


def write_saved_model(module, output_dir, meta):
    """Save `module` (with `serve_images` and `serve_encoded`) as a SavedModel in
    `output_dir`, replaced atomically, with `meta` (+ the signature names) in `export.json`;
    returns the path."""
    output_dir = os.path.abspath(output_dir)
    tmp = output_dir.rstrip("/") + f".tmp-{os.getpid()}"
    tf.saved_model.save(module, tmp, signatures={
        "serving_default": module.serve_images.get_concrete_function(),
        "serve_images": module.serve_images.get_concrete_function(),
        "serve_encoded": module.serve_encoded.get_concrete_function(),
    })
    meta = dict(meta, signatures=["serving_default", "serve_images", "serve_encoded"])
    with open(os.path.join(tmp, "export.json"), "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=1)
    if os.path.isdir(output_dir):
        import shutil
        shutil.rmtree(output_dir)
    os.replace(tmp, output_dir)
    logging.info("SavedModel written to %s", output_dir)
    return output_dir


