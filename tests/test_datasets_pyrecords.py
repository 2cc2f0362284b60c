"""The TensorFlow-free TFRecord / tf.train.Example reader and writer
(`iseg.datasets.records`) against TensorFlow's own."""

import os
import struct

import numpy as np
import pytest
import tensorflow as tf

from iseg.datasets import records
from iseg.errors import DataError


def _tf_features(data):
    """{name: list} of a serialized Example, decoded by the protobuf library (the oracle)."""
    out = {}
    for name, feature in tf.train.Example.FromString(data).features.feature.items():
        kind = feature.WhichOneof("kind")
        out[name] = list(getattr(feature, kind).value) if kind else []
    return out


def _tf_example(features):
    def feature(values):
        if isinstance(values[0], bytes):
            return tf.train.Feature(bytes_list=tf.train.BytesList(value=values))
        if isinstance(values[0], int):
            return tf.train.Feature(int64_list=tf.train.Int64List(value=values))
        return tf.train.Feature(float_list=tf.train.FloatList(value=values))
    return tf.train.Example(features=tf.train.Features(
        feature={k: feature(v) for k, v in features.items()})).SerializeToString()


FEATURES = {
    "image/encoded": [bytes(range(256)) * 3],
    "names": [b"a", b"", b"\xff\x00b"],
    "ints": [0, 1, -1, 127, 128, 2**40, -(2**63), 2**63 - 1],
    "floats": [0.0, -1.5, 3.25, 1e-30, 6.5e20],
}


def test_parse_example_matches_protobuf_for_every_feature():
    data = _tf_example(FEATURES)
    assert records.parse_example(data) == _tf_features(data)
    assert records.parse_example(data)["ints"] == FEATURES["ints"]


def test_encode_example_is_read_by_protobuf():
    data = records.encode_example(FEATURES)
    assert _tf_features(data) == records.parse_example(data) == {
        k: (v if k != "floats" else [float(np.float32(x)) for x in v])
        for k, v in FEATURES.items()}


def test_unpacked_numbers_and_unknown_fields():
    # Feature{int64_list{value: 5 (unpacked), value: -2 (unpacked)}} next to an unknown
    # field 7 (fixed64) of Example, and Feature{float_list{value: 2.5 (one fixed32)}}
    ints = b"\x08\x05" + b"\x08" + records._encode_varint(-2)
    floats = b"\x0d" + struct.pack("<f", 2.5)
    feature_i = records._len_field(3, ints)
    feature_f = records._len_field(2, floats)
    entry = lambda k, f: records._len_field(1, records._len_field(1, k) +  # noqa: E731
                                            records._len_field(2, f))
    data = (records._len_field(1, entry(b"i", feature_i) + entry(b"f", feature_f)) +
            b"\x39" + bytes(8))
    assert records.parse_example(data) == {"i": [5, -2], "f": [2.5]} == _tf_features(data)


@pytest.mark.parametrize("compression", ["NONE", "GZIP", "ZLIB"])
def test_reads_tf_written_files_and_tf_reads_ours(tmp_path, compression):
    payloads = [records.encode_example({"k": [i], "b": [os.urandom(i * 37)]})
                for i in range(5)]
    tf_path, our_path = str(tmp_path / "tf.tfrecord"), str(tmp_path / "our.tfrecord")
    with tf.io.TFRecordWriter(tf_path, tf.io.TFRecordOptions(
            "" if compression == "NONE" else compression)) as w:
        for p in payloads:
            w.write(p)
    with records.RecordWriter(our_path, compression) as w:
        for p in payloads:
            w.write(p)
    for verify in records.VERIFY:
        assert list(records.read_records(tf_path, compression, verify)) == payloads
        rf = records.RecordFile(tf_path, compression, verify)
        assert [rf[i] for i in range(len(rf))] == payloads
    ctype = "" if compression == "NONE" else compression
    assert [r.numpy() for r in tf.data.TFRecordDataset(our_path, ctype)] == payloads
    if compression == "NONE":
        assert open(our_path, "rb").read() == open(tf_path, "rb").read()


def test_converted_shards_decode_like_tensorflow(tmp_path):
    from iseg.datasets.synthetic import generate_shapes

    generate_shapes(str(tmp_path), num_train=3, num_val=1, image_size=(24, 20), num_shards=1,
                    compression="GZIP")
    path = str(tmp_path / "train-00000-of-00001.tfrecord")
    ours = list(records.read_records(path, "GZIP", verify="full"))
    theirs = [r.numpy() for r in tf.data.TFRecordDataset(path, "GZIP")]
    assert ours == theirs and len(ours) == 3
    for data in ours:
        features = records.parse_example(data)
        assert features == _tf_features(data)
        assert features["image/height"] == [24] and features["image/width"] == [20]


def _shard(tmp_path, n=3):
    path = str(tmp_path / "train-00000-of-00001.tfrecord")
    with records.RecordWriter(path) as w:
        for i in range(n):
            w.write(records.encode_example({"k": [i], "pad": [bytes(50)]}))
    return path


def _one_line_error(fn, path):
    with pytest.raises(DataError) as e:
        fn()
    assert "\n" not in str(e.value) and path in str(e.value)
    return str(e.value)


def test_truncated_and_corrupt_files_name_the_file(tmp_path):
    path = _shard(tmp_path)
    data = open(path, "rb").read()
    open(path, "wb").write(data[:-10])
    msg = _one_line_error(lambda: records.RecordFile(path), path)
    assert msg.startswith("truncated TFRecord shard") and "record 2" in msg
    msg = _one_line_error(lambda: list(records.read_records(path)), path)
    assert msg.startswith("truncated TFRecord shard") and "record 2" in msg

    bad = bytearray(data)
    bad[len(data) // 2] ^= 0xFF  # inside the second record's payload
    open(path, "wb").write(bytes(bad))
    assert len(list(records.read_records(path))) == 3  # header checks only
    msg = _one_line_error(lambda: list(records.read_records(path, verify="full")), path)
    assert "bad payload checksum of record 1" in msg

    bad = bytearray(data)
    bad[2] ^= 0x01  # the first length
    open(path, "wb").write(bytes(bad))
    msg = _one_line_error(lambda: records.RecordFile(path), path)
    assert "bad length checksum of record 0 at byte 0" in msg


def test_damaged_gzip_names_the_file(tmp_path):
    path = str(tmp_path / "x.tfrecord")
    with records.RecordWriter(path, "GZIP") as w:
        w.write(b"payload" * 100)
    data = open(path, "rb").read()
    open(path, "wb").write(data[:len(data) // 2])
    msg = _one_line_error(lambda: records.RecordFile(path, "gzip"), path)
    assert msg.startswith("corrupt or truncated GZIP TFRecord shard")


def test_bad_options():
    with pytest.raises(ValueError, match="compression must be one of NONE, GZIP, ZLIB"):
        records.check_compression("lz4")
    with pytest.raises(TypeError, match="feature 'x': values must be"):
        records.encode_example({"x": [1, b"a"]})


def test_converter_writes_the_same_shards_without_tensorflow(tmp_path):
    from iseg.datasets.convert import open_record_writer
    from iseg.datasets.synthetic import generate_shapes

    for writer in ("tensorflow", "python"):
        generate_shapes(str(tmp_path / writer), num_train=2, num_val=1, image_size=(16, 16),
                        num_shards=1, writer=writer)
    for name in ("train-00000-of-00001.tfrecord", "val-00000-of-00001.tfrecord"):
        ours = open(tmp_path / "python" / name, "rb").read()
        assert ours == open(tmp_path / "tensorflow" / name, "rb").read() and ours
    with pytest.raises(ValueError, match="writer must be one of"):
        open_record_writer(str(tmp_path / "x"), "NONE", "tf")
