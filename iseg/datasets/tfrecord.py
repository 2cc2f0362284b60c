"""TFRecord IO: writing `tf.train.Example` records, reading three record formats, checks.

Record formats read by `make_decoder`:

- ``"example"``: `tf.train.Example` with the TF DeepLab / TF Model Garden keys
  ``image/encoded``, ``image/format``, ``image/height``, ``image/width``,
  ``image/filename``, ``image/segmentation/class/encoded``,
  ``image/segmentation/class/format``. This is what the iseg converter writes (images in
  their original encoding, labels as 8-bit PNG of train ids).
- ``"iseg_float"``: the original iSeg tools' records: keys ``image``, ``label``,
  ``height``, ``width``, ``depth`` where ``image`` is a `tf.io.serialize_tensor` of a
  float32 ``[H, W, 3]`` tensor and ``label`` of an int32 ``[H, W, 1]`` tensor.
- ``"iseg_jpeg"``: as above but ``image`` is a serialized scalar string tensor holding
  JPEG bytes.

`detect_record_format` peeks at the first record of a shard. `check_shards` verifies the
record framing (length + masked CRC32C of each header, and that the last record ends at the
end of the file) without reading the payloads, so a truncated or damaged shard gives an
error naming the file instead of a failure deep inside training; ``full=True`` also reads
every record through TensorFlow (payload CRCs, compressed files).
"""

import tensorflow as tf

from iseg.datasets import info as info_lib
from iseg.datasets import records
from iseg.datasets.records import COMPRESSIONS, crc32c, make_example, masked_crc32c  # noqa: F401
from iseg.errors import DataError

EXAMPLE_KEYS = {
    "image/encoded": tf.io.FixedLenFeature((), tf.string),
    "image/filename": tf.io.FixedLenFeature((), tf.string, default_value=""),
    "image/height": tf.io.FixedLenFeature((), tf.int64, default_value=0),
    "image/width": tf.io.FixedLenFeature((), tf.int64, default_value=0),
    "image/segmentation/class/encoded": tf.io.FixedLenFeature((), tf.string, default_value=""),
}
ISEG_KEYS = {
    "image": tf.io.FixedLenFeature((), tf.string),
    "label": tf.io.FixedLenFeature((), tf.string, default_value=""),
    "height": tf.io.FixedLenFeature((), tf.int64),
    "width": tf.io.FixedLenFeature((), tf.int64),
    "depth": tf.io.FixedLenFeature((), tf.int64, default_value=3),
}
RECORD_FORMATS = ("example", "iseg_float", "iseg_jpeg")


def compression_type(compression):
    c = records.check_compression(compression)
    return "" if c == "NONE" else c


READ_BUFFER_BYTES = 4 << 20


def read_records(path, compression="NONE"):
    """A `TFRecordDataset` of one file with an explicit read buffer (4 MiB)."""
    ctype = compression if compression == "" else compression_type(compression)
    return tf.data.TFRecordDataset(path, compression_type=ctype,
                                   buffer_size=READ_BUFFER_BYTES)


# ----------------------------------------------------------------------------- writing


def _bytes(v):
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[v]))


def _int(v):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v)]))


def make_iseg_example(image, label, jpeg=False):
    """A record in the original iSeg serialized-tensor format (for tests and migration).

    `image`: uint8/float ``[H, W, 3]``; `label`: integer ``[H, W]`` or ``[H, W, 1]``.
    """
    image = tf.convert_to_tensor(image)
    label = tf.reshape(tf.cast(label, tf.int32), [image.shape[0], image.shape[1], 1])
    if jpeg:
        data = tf.io.encode_jpeg(tf.cast(image, tf.uint8), quality=100)
    else:
        data = tf.cast(image, tf.float32)
    feature = {
        "image": _bytes(tf.io.serialize_tensor(data).numpy()),
        "label": _bytes(tf.io.serialize_tensor(label).numpy()),
        "height": _int(image.shape[0]),
        "width": _int(image.shape[1]),
        "depth": _int(image.shape[2]),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def record_writer(path, compression="NONE"):
    return tf.io.TFRecordWriter(path, options=tf.io.TFRecordOptions(compression_type(compression)))


# ----------------------------------------------------------------------------- reading


def detect_record_format(path, compression="NONE"):
    """"example", "iseg_float" or "iseg_jpeg", from the first record of `path`."""
    from tensorflow.core.framework import tensor_pb2  # pylint: disable=import-outside-toplevel

    ds = read_records(path, compression)
    try:
        first = next(iter(ds.take(1)), None)
    except tf.errors.OpError as e:
        raise ValueError(f"cannot read TFRecord shard {path}: {e.message}") from None
    if first is None:
        raise ValueError(f"TFRecord shard {path} holds no records")
    try:
        example = tf.train.Example.FromString(first.numpy())
    except Exception as e:  # protobuf DecodeError has no stable import path
        raise ValueError(f"first record of {path} is not a tf.train.Example: {e}") from None
    keys = example.features.feature
    if "image/encoded" in keys:
        return "example"
    if "image" in keys:
        proto = tensor_pb2.TensorProto.FromString(keys["image"].bytes_list.value[0])
        return "iseg_jpeg" if proto.dtype == tf.string.as_datatype_enum else "iseg_float"
    raise ValueError(
        f"unknown record keys in {path}: {sorted(keys)}; expected 'image/encoded' "
        "(TF DeepLab / Model Garden / iseg) or 'image' + 'label' (original iSeg)"
    )


def _legacy_label_dtype(path, compression):
    from tensorflow.core.framework import tensor_pb2  # pylint: disable=import-outside-toplevel

    ds = read_records(path, compression)
    first = next(iter(ds.take(1)))
    example = tf.train.Example.FromString(first.numpy())
    data = example.features.feature["label"].bytes_list.value
    if not data:
        return tf.int32
    return tf.dtypes.as_dtype(tensor_pb2.TensorProto.FromString(data[0]).dtype)


def decode_rgb(encoded):
    """uint8 RGB `[H, W, 3]` from JPEG / PNG (8 or 16 bit) / BMP / GIF bytes: the one image
    decoder of training, evaluation, prediction and the exported SavedModel."""
    image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    return tf.ensure_shape(image, [None, None, 3])


def make_decoder(record_format, label_dtype=tf.int32, lazy_image=False):
    """A function serialized record -> dict(image uint8 [H,W,3], label uint8/int32 [H,W,1],
    height, width int32, filename string).

    With `lazy_image` and the "example" format the image is not decoded: the dict holds
    ``encoded`` (the image bytes) instead of ``image``, and height/width come from the
    label (the converter guarantees equal sizes), so the caller can decode only a window.
    """
    if record_format not in RECORD_FORMATS:
        raise ValueError(f"record_format must be one of {RECORD_FORMATS}, got {record_format!r}")

    if record_format == "example":

        def decode(record):
            f = tf.io.parse_single_example(record, EXAMPLE_KEYS)
            label = tf.io.decode_png(f["image/segmentation/class/encoded"], channels=1)
            out = {"label": label, "filename": f["image/filename"]}
            if lazy_image:
                out["encoded"] = f["image/encoded"]
                shape = tf.shape(label)
            else:
                out["image"] = decode_rgb(f["image/encoded"])
                shape = tf.shape(out["image"])
            out["height"], out["width"] = shape[0], shape[1]
            return out

        return decode

    def decode_legacy(record):
        f = tf.io.parse_single_example(record, ISEG_KEYS)
        h = tf.cast(f["height"], tf.int32)
        w = tf.cast(f["width"], tf.int32)
        if record_format == "iseg_jpeg":
            image = tf.io.decode_jpeg(tf.io.parse_tensor(f["image"], tf.string), channels=3)
        else:
            image = tf.io.parse_tensor(f["image"], tf.float32)
            image = tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)
        image = tf.reshape(image, [h, w, 3])
        label = tf.reshape(tf.io.parse_tensor(f["label"], label_dtype), [h, w, 1])
        return {
            "image": image,
            "label": tf.cast(label, tf.int32),
            "height": h,
            "width": w,
            "filename": tf.constant(""),
        }

    return decode_legacy


def resolve_format(files, record_format="auto", compression="NONE"):
    """(record_format, label_dtype) for a list of shards."""
    if record_format == "auto":
        record_format = detect_record_format(files[0], compression)
    label_dtype = tf.int32
    if record_format != "example":
        label_dtype = _legacy_label_dtype(files[0], compression)
    return record_format, label_dtype


# ----------------------------------------------------------------------------- checking


def check_shard_framing(path):
    """Number of records in an uncompressed shard; DataError naming the file if damaged."""
    size = info_lib.getsize(path)
    with info_lib.open_file(path, "rb") as f:
        return sum(1 for _ in records.scan_frames(f, path, size))


def check_shards(files, compression="NONE", full=False):
    """Check every shard (see module docstring); returns the record count per file."""
    counts = {}
    ctype = compression_type(compression)
    for path in files:
        if not info_lib.isfile(path):
            raise FileNotFoundError(f"TFRecord shard not found: {path}")
        if ctype == "" and not full:
            counts[path] = check_shard_framing(path)
            continue
        if not full:
            counts[path] = None
            continue
        n = 0
        try:
            for _ in read_records(path, ctype):
                n += 1
        except tf.errors.OpError as e:
            raise DataError(
                f"corrupt or truncated TFRecord shard {path} after record {n}: {e.message}"
            ) from None
        counts[path] = n
    return counts
