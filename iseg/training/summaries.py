"""TensorBoard summaries written with `tf.summary.write` and the scalar / image plugin
metadata, so logging does not need the `tensorboard` package (only viewing does)."""

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import summary_pb2


def _metadata(plugin, description=""):
    meta = summary_pb2.SummaryMetadata()
    meta.plugin_data.plugin_name = plugin
    meta.plugin_data.content = b""
    if description:
        meta.summary_description = description
    return meta


def scalar(name, value, step=None):
    """Like `tf.summary.scalar` (default writer, `step` or the default step)."""
    return tf.summary.write(name, tf.cast(value, tf.float32), step=step,
                            metadata=_metadata("scalars"))


def image(name, images, step=None, description=""):
    """Like `tf.summary.image` for uint8 `[N, H, W, 3]` images (stored as PNGs)."""
    images = np.asarray(images, np.uint8)
    pngs = [tf.io.encode_png(im) for im in images]
    h, w = images.shape[1:3]
    tensor = tf.stack([tf.as_string(w), tf.as_string(h)] + pngs)
    return tf.summary.write(name, tensor, step=step,
                            metadata=_metadata("images", description))


def read_events(log_dir):
    """{tag: [(step, value)]} of every scalar (float) and {tag: count} of image summaries
    in the event files under `log_dir` (for tests and scripts)."""
    import glob
    import os

    from iseg.datasets.tfrecord import read_records

    scalars, images = {}, {}
    for path in sorted(glob.glob(os.path.join(log_dir, "**", "events.out.tfevents.*"),
                                 recursive=True)):
        for raw in read_records(path):
            event = tf.compat.v1.Event.FromString(raw.numpy())
            for v in event.summary.value:
                plugin = v.metadata.plugin_data.plugin_name
                if plugin == "scalars":
                    val = tf.make_ndarray(v.tensor)
                    scalars.setdefault(v.tag, []).append((event.step, float(val)))
                elif plugin == "images":
                    images[v.tag] = images.get(v.tag, 0) + 1
    return scalars, images
