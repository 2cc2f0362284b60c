"""Stand-ins for engine tests: a tiny segmentation model with the SegmentationModel loss
contract, and synthetic datasets whose labels are a function of the image. (No tests here.)
"""

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from iseg.distribute import num_replicas_in_sync
from iseg.training.config import DatasetMeta, TrainConfig

NUM_CLASSES = 3
META = DatasetMeta(num_classes=NUM_CLASSES, class_names=["a", "b", "c"],
                   palette=[(255, 0, 0), (0, 255, 0), (0, 0, 255)], ignore_label=255,
                   name="toy")


@keras.saving.register_keras_serializable(package="iseg_tests")
class TinySegModel(keras.Model):
    """conv -> (BN) -> relu -> conv classifier; tracks `ce` and `aux` like the real model."""

    def __init__(self, num_classes=NUM_CLASSES, width=8, use_bn=True, dropout=0.0,
                 **kwargs):
        super().__init__(**kwargs)
        self.num_classes, self.width, self.use_bn = num_classes, width, use_bn
        self.dropout = dropout
        self.drop = keras.layers.Dropout(dropout, name="dropout") if dropout else None
        self.normalization = "minus_one_to_one"
        self.conv1 = keras.layers.Conv2D(width, 3, padding="same", name="conv1")
        self.bn = keras.layers.BatchNormalization(name="bn") if use_bn else None
        self.classifier = keras.layers.Conv2D(num_classes, 1, name="classifier")
        self.aux = keras.layers.Conv2D(num_classes, 1, name="aux")
        self.ce_tracker = keras.metrics.Mean(name="ce")
        self.aux_tracker = keras.metrics.Mean(name="aux")

    def call(self, images, training=None):
        x = self.conv1(images)
        if self.bn is not None:
            x = self.bn(x, training=training)
        x = ops.relu(x)
        if self.drop is not None:
            x = self.drop(x, training=training)
        logits = ops.cast(self.classifier(x), "float32")
        if training:
            return {"logits": logits, "aux_logits": ops.cast(self.aux(x), "float32")}
        return logits

    def _ce(self, y, logits):
        y = ops.cast(y, "int32")
        valid = ops.cast(y != 255, "float32")
        y = ops.where(y == 255, 0, y)
        ce = keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True)
        return ops.sum(ce * valid) / ops.maximum(ops.sum(valid), 1.0)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        if not isinstance(y_pred, dict):
            y_pred = {"logits": y_pred}
        ce = self._ce(y, y_pred["logits"])
        self.ce_tracker.update_state(ce)
        total = ce
        if "aux_logits" in y_pred:
            aux = 0.4 * self._ce(y, y_pred["aux_logits"])
            self.aux_tracker.update_state(aux)
            total = total + aux
        # scaled for distribution, as SegmentationModel.compute_loss (the trainer's contract)
        return total / num_replicas_in_sync()

    def get_config(self):
        return dict(super().get_config(), num_classes=self.num_classes, width=self.width,
                    use_bn=self.use_bn, dropout=self.dropout)


def tiny_model_fn(width=8, use_bn=True, dropout=0.0):
    def fn(cfg, meta):
        model = TinySegModel(meta.num_classes, width=width, use_bn=use_bn, dropout=dropout)
        model(np.zeros((1, 8, 8, 3), np.float32), training=True)
        return model
    return fn


def _example(seed, index, size, nan_from=None):
    s = tf.stack([tf.cast(seed, tf.int64), index])
    image = tf.random.stateless_uniform([size, size, 3], seed=s, minval=-1.0, maxval=1.0)
    label = tf.cast(image[..., 0] > 0.3, tf.int32) + tf.cast(image[..., 1] > 0.5, tf.int32)
    flip = tf.random.stateless_uniform([], seed=s + 7) > 0.5  # "augmentation"
    image = tf.where(flip, image[:, ::-1], image)
    label = tf.where(flip, label[:, ::-1], label)
    if nan_from is not None:
        image = tf.where(index >= nan_from, tf.fill(tf.shape(image), np.nan), image)
    return image, label


def toy_train_fn(num_examples=64, size=16, shuffle=True, nan_from=None, empty=False):
    def fn(ctx, seed):
        per_replica = ctx.get_per_replica_batch_size(fn.global_batch)
        ds = tf.data.Dataset.range(num_examples)
        if empty:
            ds = ds.take(0)
        ds = ds.shard(ctx.num_input_pipelines, ctx.input_pipeline_id)
        if shuffle:
            ds = ds.shuffle(num_examples, seed=seed, reshuffle_each_iteration=True)
        ds = ds.repeat().map(lambda i: _example(seed, i, size, nan_from))
        return ds.batch(per_replica, drop_remainder=True)
    fn.global_batch = 4
    return fn


def toy_eval_fn(num_examples=6, size=16, batch=2):
    def fn():
        ds = tf.data.Dataset.range(1000, 1000 + num_examples).map(
            lambda i: _example(0, i, size))
        ds = ds.map(lambda im, lab: ({"image": im, "height": size, "width": size,
                                      "filename": tf.strings.as_string(i_(lab))}, lab))
        return ds.batch(batch)
    return fn


def i_(lab):
    return tf.reduce_sum(lab)


def toy_config(model_dir, **overrides):
    cfg = dict(model_dir=str(model_dir), batch_size=4, steps=6, lr=0.05, optimizer="sgd",
               crop_size=(16, 16), checkpoint_every=1000, eval_every=0, log_every=2,
               evaluate_at_end=False, progress=False, strategy="auto", seed=1)
    cfg.update(overrides)
    return TrainConfig(**cfg)


def run_toy(model_dir, *, width=8, use_bn=True, data=None, eval_data=None, **overrides):
    from iseg.training.trainer import train

    cfg = toy_config(model_dir, **overrides)
    data = data or toy_train_fn()
    data.global_batch = cfg.batch_size
    return train(cfg, model_fn=tiny_model_fn(width, use_bn), train_dataset_fn=data,
                 eval_dataset_fn=eval_data or toy_eval_fn(), meta=META)
