"""Evaluate a model over a split: streaming confusion matrix -> mIoU, pixel accuracy,
per-class IoU; results as JSON and a text table; optional confusion matrix and PNGs."""

import os
import time

import numpy as np
import tensorflow as tf
from absl import logging

from iseg.evaluation.inference import predict_logits
from iseg.evaluation.results import results_name, write_results  # noqa: F401  (re-exported)
from iseg.evaluation.visualize import overlay, save_label_png
from iseg.metrics import ConfusionMatrix
from iseg.datasets.pipeline import denormalize, input_normalization
from iseg.errors import EmptyDatasetError
from iseg.progress import progress_bar


def _to_str(v):
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)


class Evaluator:
    """Runs inference (whole / slide, multi-scale, flip) over a dataset and scores it.

    The dataset yields `({"image", "height", "width", "filename"}, labels)` batches with
    normalised images and labels padded with the ignore label.
    """

    def __init__(self, model, num_classes, *, class_names=None, palette=None,
                 ignore_label=255, mode="whole", scales=(1.0,), flip=False, crop_size=None,
                 stride=None, align_corners=True, denormalize_fn=None):
        self.model = model
        self.num_classes = num_classes
        self.class_names = list(class_names) if class_names else [
            str(i) for i in range(num_classes)]
        self.palette = palette
        self.ignore_label = ignore_label
        self.options = dict(mode=mode, scales=tuple(scales), flip=flip, crop_size=crop_size,
                            stride=stride, align_corners=align_corners)
        self.denormalize_fn = denormalize_fn
        model_call = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
        if mode == "whole":
            self._predict = tf.function(
                lambda x: tf.argmax(predict_logits(model_call, x, **self.options), -1,
                                    output_type=tf.int32), reduce_retracing=True)
        else:  # window offsets are Python ints: run the loop eagerly, the model traced
            self._predict = lambda x: tf.argmax(
                predict_logits(model_call, x, **self.options), -1, output_type=tf.int32)

    def predict(self, images):
        """Label maps `[N, H, W]` for a batch of normalised images."""
        return self._predict(tf.convert_to_tensor(images, tf.float32))

    def evaluate(self, dataset, *, max_batches=None, prediction_dir=None,
                 max_predictions=0, num_samples=0, split="val", progress=False,
                 total_images=None):
        """Scores dict (see `scores_from_confusion`) plus `confusion_matrix`,
        `num_images`, `seconds`, `samples` (up to `num_samples` uint8 triples
        (image, ground-truth overlay, prediction overlay) for image summaries).

        `progress`: a progress bar (images/s; ETA when `total_images` is given)."""
        cm = ConfusionMatrix(self.num_classes, self.ignore_label)
        samples, num_images, saved = [], 0, 0
        start = time.time()
        bar = progress_bar(total=total_images, desc=f"evaluating {split}", enabled=progress)
        for batch_index, (features, labels) in enumerate(dataset):
            if max_batches is not None and batch_index >= max_batches:
                break
            if not isinstance(features, dict):
                features = {"image": features}
            images = features["image"]
            preds = self.predict(images)
            cm.update(labels, preds)
            n = int(preds.shape[0])
            num_images += n
            bar.update(n)
            want_png = prediction_dir and (max_predictions < 0 or saved < max_predictions)
            if want_png or len(samples) < num_samples:
                preds_np, labels_np = preds.numpy(), np.asarray(labels)
                heights = np.asarray(features.get("height", [preds.shape[1]] * n)).reshape(-1)
                widths = np.asarray(features.get("width", [preds.shape[2]] * n)).reshape(-1)
                names = features.get("filename")
                for i in range(n):
                    h, w = int(heights[i]), int(widths[i])
                    if want_png and (max_predictions < 0 or saved < max_predictions):
                        name = _to_str(names[i].numpy()) if names is not None else ""
                        stem = os.path.splitext(os.path.basename(name))[0] or (
                            f"{split}_{num_images - n + i:06d}")
                        save_label_png(os.path.join(prediction_dir, stem + ".png"),
                                       preds_np[i, :h, :w], self._palette())
                        saved += 1
                    if len(samples) < num_samples and self.denormalize_fn is not None:
                        image = np.asarray(self.denormalize_fn(images[i:i + 1]))[0, :h, :w]
                        image = np.clip(image, 0, 255).astype(np.uint8)
                        samples.append((
                            image,
                            overlay(image, labels_np[i, :h, :w], self._palette(),
                                    ignore_label=self.ignore_label),
                            overlay(image, preds_np[i, :h, :w], self._palette()),
                        ))
        bar.close()
        if num_images == 0:
            raise EmptyDatasetError(f"evaluation split {split!r} yielded no images")
        scores = cm.scores(self.class_names)
        scores.update(confusion_matrix=cm.matrix, num_images=num_images,
                      seconds=time.time() - start, samples=samples, split=split,
                      inference=dict(self.options, scales=list(self.options["scales"])))
        logging.info("%s: mIoU %.4f, pixel accuracy %.4f over %d images",
                     split, scores["miou"], scores["pixel_accuracy"], num_images)
        return scores

    def _palette(self):
        if self.palette is not None:
            return self.palette
        from iseg.datasets.specs import voc_colormap
        return voc_colormap(self.num_classes)


def make_evaluator(cfg, model, meta):
    """The `Evaluator` of a run: inference settings from `cfg` (a `TrainConfig`), classes
    from `meta` (a `DatasetMeta`), sample images denormalised as the model's input."""
    normalization = input_normalization(model)
    crop = tuple(cfg.eval_crop_size or cfg.crop_size)
    stride = tuple(max(1, int(np.ceil(c * cfg.eval_stride_ratio))) for c in crop)
    return Evaluator(model, meta.num_classes, class_names=meta.class_names,
                     palette=meta.palette, ignore_label=meta.ignore_label,
                     mode=cfg.eval_mode, scales=tuple(cfg.eval_scales), flip=cfg.eval_flip,
                     crop_size=crop, stride=stride, align_corners=cfg.align_corners,
                     denormalize_fn=lambda x: denormalize(x, normalization))
