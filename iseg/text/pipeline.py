"""tf.data input for the text recognizers: decode, resize to the model's height keeping
the aspect ratio (at most the model's width), pad on the right, normalise to [-1, 1],
labels as token ids and character-centre masks from the character boxes.

The same `prepare_image` is baked into the exported SavedModel, so serving resizes and pads
exactly as training did.
"""

import tensorflow as tf

from iseg.datasets import info as info_lib
from iseg.datasets.tfrecord import decode_rgb
from iseg.text.charset import EOS, PAD

TEXT_KEYS = {
    "image/encoded": tf.io.FixedLenFeature((), tf.string),
    "image/text": tf.io.FixedLenFeature((), tf.string, default_value=""),
    "image/char_boxes": tf.io.VarLenFeature(tf.float32),
}


def prepare_image(image, image_size, channels=1, keep_aspect=True):
    """uint8 `[h, w, 3]` -> (float32 `[H, W, channels]` in [-1, 1], x scale, y scale).

    The image is resized to height H and width min(W, round(w * H / h)) (`keep_aspect`;
    else W), then padded on the right with 0 (mid grey)."""
    height, width = image_size
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    if keep_aspect:
        new_w = tf.clip_by_value(tf.round(shape[1] * height / shape[0]), 1.0, float(width))
    else:
        new_w = tf.constant(float(width))
    x = tf.image.resize(tf.cast(image, tf.float32), tf.stack([height, tf.cast(new_w, tf.int32)]),
                        antialias=True)
    if channels == 1:
        x = tf.image.rgb_to_grayscale(x)
    x = x / 127.5 - 1.0
    x = tf.pad(x, [[0, 0], [0, width - tf.shape(x)[1]], [0, 0]])
    x = tf.ensure_shape(x, (height, width, channels))
    return x, new_w / shape[1], height / shape[0]


def centre_mask(boxes, image_size, shrink=0.5):
    """float32 `[H, W]`: 1 at the pixels whose centre lies in a character box shrunk about
    its centre to `shrink` of its width and height (at least one pixel wide)."""
    height, width = image_size
    boxes = tf.reshape(tf.cast(boxes, tf.float32), (-1, 4))
    cx = (boxes[:, 0] + boxes[:, 2]) / 2
    cy = (boxes[:, 1] + boxes[:, 3]) / 2
    hw = tf.maximum((boxes[:, 2] - boxes[:, 0]) * shrink / 2, 0.5)
    hh = tf.maximum((boxes[:, 3] - boxes[:, 1]) * shrink / 2, 0.5)
    ys = tf.range(height, dtype=tf.float32)[:, None, None] + 0.5
    xs = tf.range(width, dtype=tf.float32)[None, :, None] + 0.5
    inside = ((tf.abs(xs - cx) <= hw) & (tf.abs(ys - cy) <= hh))
    return tf.cast(tf.reduce_any(inside, axis=-1), tf.float32)


class TokenEncoder:
    """Words -> int32 labels `[max_length + 1]` in graph mode (see `iseg.text.charset`);
    characters outside the charset map to -2 (so `valid` can reject the word)."""

    def __init__(self, charset, max_length):
        self.charset = charset
        self.max_length = int(max_length)
        codes = [ord(c) for c in charset.chars]
        self.table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(tf.constant(codes, tf.int32),
                                                tf.range(1, len(codes) + 1, dtype=tf.int32)),
            default_value=-2)

    def ids(self, word):
        if not self.charset.case_sensitive:
            word = tf.strings.lower(word, encoding="utf-8")
        return self.table.lookup(tf.strings.unicode_decode(word, "UTF-8"))

    def valid(self, word):
        ids = self.ids(word)
        n = tf.shape(ids)[0]
        return (n >= 1) & (n <= self.max_length) & tf.reduce_all(ids > 0)

    def encode(self, word):
        ids = self.ids(word)[:self.max_length]
        ids = tf.concat([ids, [EOS]], axis=0)
        ids = tf.pad(ids, [[0, self.max_length + 1 - tf.shape(ids)[0]]], constant_values=PAD)
        return tf.ensure_shape(ids, (self.max_length + 1,))


def _parse(record):
    ex = tf.io.parse_single_example(record, TEXT_KEYS)
    boxes = tf.sparse.to_dense(ex["image/char_boxes"])
    return decode_rgb(ex["image/encoded"]), ex["image/text"], boxes


def _files(data_dir, split):
    info = None
    try:
        from iseg.text.records import load_text_info  # pylint: disable=import-outside-toplevel
        info = load_text_info(data_dir)
    except FileNotFoundError:
        pass
    compression = (info or {}).get("compression", "NONE")
    return info_lib.list_shards(data_dir, split), "" if compression == "NONE" else compression


def build_text_dataset(data_dir, split, *, charset, max_length, image_size, channels=1,
                       batch_size=32, training=False, seed=0, input_context=None,
                       repeat=None, shuffle_buffer=2000, mask_shrink=0.5, keep_aspect=True):
    """Training: batches of `({"images", "tokens"}, {"tokens", "mask", "boxes",
    "mask_weight"})` (`boxes` `[max_length, 4]` the character boxes in input pixels, zero
    padded),
    words that do not fit the charset or `max_length` skipped. Evaluation: batches of
    `{"images", "words"}` with every word kept (as written in the records)."""
    files, compression = _files(data_dir, split)
    ds = tf.data.Dataset.from_tensor_slices(files)
    if input_context is not None and input_context.num_input_pipelines > 1:
        ds = ds.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
    if input_context is not None:
        batch_size = input_context.get_per_replica_batch_size(batch_size)
    ds = ds.interleave(lambda f: tf.data.TFRecordDataset(f, compression_type=compression),
                       cycle_length=max(1, min(4, len(files))))
    options = tf.data.Options()
    options.deterministic = True
    ds = ds.with_options(options)
    encoder = TokenEncoder(charset, max_length)
    if training:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
        if repeat is not False:
            ds = ds.repeat()

    def example(record):
        image, word, boxes = _parse(record)
        x, sx, sy = prepare_image(image, image_size, channels, keep_aspect)
        if not training:
            return {"images": x, "words": word}
        boxes = tf.reshape(boxes, (-1, 4)) * tf.stack([sx, sy, sx, sy])
        has_boxes = tf.shape(boxes)[0] > 0
        tokens = encoder.encode(word)
        mask = centre_mask(boxes, image_size, mask_shrink)
        char_boxes = tf.pad(boxes[:max_length], [[0, max_length - tf.shape(boxes[:max_length])[0]],
                                                  [0, 0]])
        return ({"images": x, "tokens": tokens},
                {"tokens": tokens, "mask": mask,
                 "boxes": tf.ensure_shape(char_boxes, (max_length, 4)),
                 "mask_weight": tf.cast(has_boxes, tf.float32)})

    if training:
        ds = ds.filter(lambda r: encoder.valid(_parse_word(r)))
    ds = ds.map(example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if not training and repeat:
        ds = ds.repeat()
    return ds.batch(batch_size, drop_remainder=training).prefetch(tf.data.AUTOTUNE)


def items_dataset(items, *, image_size, channels=1, batch_size=32, keep_aspect=True):
    """Evaluation batches `{"images", "words"}` (as `build_text_dataset(training=False)`)
    from `items()`, a function returning an iterable of (name, encoded image, word): the
    readers of `iseg.text.records` (an LMDB folder, a label file) without converting."""
    ds = tf.data.Dataset.from_generator(
        lambda: ((encoded, word.encode("utf-8")) for _, encoded, word in items()),
        output_signature=(tf.TensorSpec((), tf.string), tf.TensorSpec((), tf.string)))

    def example(encoded, word):
        x, _, _ = prepare_image(decode_rgb(encoded), image_size, channels, keep_aspect)
        return {"images": x, "words": word}

    return ds.map(example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).batch(
        batch_size).prefetch(tf.data.AUTOTUNE)


def _parse_word(record):
    return tf.io.parse_single_example(record, {"image/text": TEXT_KEYS["image/text"]})[
        "image/text"]
