"""Is the synthetic shapes dataset learnable? Train a tiny CNN on it and print val mIoU.

    python benchmarks/shapes_learnability.py [--steps=600] [--batch_size=16]

Generates the shapes dataset (200 train / 50 val images of 96x96) into a temporary
folder, trains a ~30k-parameter fully convolutional network with the iseg training
pipeline (crop 96, scales 0.75..1.5, flip, brightness) and prints the wall time and the
val mIoU (confusion matrix over the split).
"""

import os
import shutil
import tempfile
import time

import numpy as np
from absl import app, flags

flags.DEFINE_integer("steps", 600, "Training steps.")
flags.DEFINE_integer("batch_size", 16, "Batch size.")
FLAGS = flags.FLAGS


def tiny_net(num_classes):
    import keras
    from keras import layers

    inputs = keras.Input((None, None, 3))
    x = inputs
    for filters, stride, rate in ((16, 1, 1), (32, 2, 1), (32, 1, 2), (32, 1, 4), (32, 1, 1)):
        x = layers.Conv2D(filters, 3, strides=stride, dilation_rate=rate, padding="same",
                          use_bias=False)(x)
        x = layers.BatchNormalization()(x)
        x = layers.ReLU()(x)
    x = layers.Conv2D(num_classes, 1)(x)
    x = layers.UpSampling2D(2, interpolation="bilinear")(x)
    return keras.Model(inputs, x)


def main(argv):
    del argv
    import keras
    import tensorflow as tf

    from iseg.datasets.augment import AugmentOptions
    from iseg.datasets.pipeline import build_dataset
    from iseg.datasets.synthetic import generate_shapes

    tmp = tempfile.mkdtemp(prefix="iseg-shapes-")
    try:
        t0 = time.perf_counter()
        info = generate_shapes(os.path.join(tmp, "shapes"))
        print(f"generated {info['num_examples']} in {time.perf_counter() - t0:.1f} s")
        k = info["num_classes"]
        data = os.path.join(tmp, "shapes")
        train = build_dataset(data, "train", training=True, batch_size=FLAGS.batch_size,
                              crop_size=(96, 96),
                              augment=AugmentOptions(scale_range=(0.75, 1.5), scale_step=None),
                              seed=0)
        model = tiny_net(k)

        def loss(y_true, y_pred):
            y_true = tf.cast(y_true, tf.int32)
            mask = tf.cast(y_true != 255, tf.float32)
            ce = keras.losses.sparse_categorical_crossentropy(
                tf.where(y_true == 255, 0, y_true), y_pred, from_logits=True)
            return tf.reduce_sum(ce * mask) / tf.maximum(tf.reduce_sum(mask), 1.0)

        model.compile(optimizer=keras.optimizers.Adam(3e-3), loss=loss)
        t0 = time.perf_counter()
        model.fit(train, steps_per_epoch=FLAGS.steps, epochs=1, verbose=0)
        train_time = time.perf_counter() - t0
        conf = np.zeros((k, k), np.int64)
        val = build_dataset(data, "val", training=False, batch_size=10, crop_size=(96, 96))
        for feats, labels in val:
            pred = np.argmax(model.predict_on_batch(feats["image"]), -1)
            lab = labels.numpy()
            ok = lab != 255
            conf += np.bincount(lab[ok] * k + pred[ok], minlength=k * k).reshape(k, k)
        tp = np.diag(conf)
        iou = tp / np.maximum(conf.sum(0) + conf.sum(1) - tp, 1)
        print(f"{FLAGS.steps} steps, batch {FLAGS.batch_size}: {train_time:.0f} s on "
              f"{os.cpu_count()} CPUs; val mIoU {iou.mean():.3f}; per class "
              + " ".join(f"{v:.3f}" for v in iou))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    app.run(main)
