"""TFRecord files and `tf.train.Example` records in plain Python (no TensorFlow, no
protobuf package): what the input path of the JAX and PyTorch backends reads, and what the
converter writes when TensorFlow is not installed.

A TFRecord file is a sequence of frames ``length (uint64 LE) | masked CRC32C of the length
(uint32) | payload | masked CRC32C of the payload (uint32)``; a GZIP / ZLIB file is that
sequence compressed as one stream. Reading verifies every length checksum and the framing
(``verify="header"``, cheap) or also every payload checksum (``verify="full"``: a
pure-Python CRC, about 1 s per MB); a damaged file raises a `DataError` naming it.

A `tf.train.Example` is the protobuf ``Example{features: Features{feature: map<string,
Feature>}}`` with ``Feature`` one of ``bytes_list`` (1), ``float_list`` (2) or
``int64_list`` (3), each a repeated ``value`` (1), numbers packed or not. `parse_example`
decodes it to ``{name: list of bytes / float / int}``; `encode_example` writes it.
"""

import gzip
import io
import struct
import zlib

from iseg.datasets import info as info_lib
from iseg.errors import DataError

COMPRESSIONS = ("NONE", "GZIP", "ZLIB")
VERIFY = ("header", "full")

# ----------------------------------------------------------------------------- CRC32C


def _crc32c_table():
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC_TABLE = _crc32c_table()


def crc32c(data):
    c = 0xFFFFFFFF
    for b in data:
        c = _CRC_TABLE[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def masked_crc32c(data):
    c = crc32c(data)
    return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF


# ----------------------------------------------------------------------------- framing


def check_compression(compression):
    """The upper-case compression name; ValueError for an unknown one."""
    c = (compression or "NONE").upper()
    if c not in COMPRESSIONS:
        raise ValueError(
            f"compression must be one of {', '.join(COMPRESSIONS)}, got {compression!r}")
    return c


def scan_frames(f, path, size=None, payloads=False, verify="header"):
    """Yield ``(offset, length, payload or None)`` of every record in the open binary file
    `f` (positioned at its start). Without `payloads` the payloads are skipped (seek) and
    `size` (the file size) is needed; a damaged frame raises a `DataError` naming `path`."""
    if verify not in VERIFY:
        raise ValueError(f"verify must be one of {VERIFY}, got {verify!r}")
    pos = count = 0
    while True:
        header = f.read(12)
        if not header:
            return
        if len(header) < 12:
            raise DataError(f"truncated TFRecord shard {path}: record {count} header cut at "
                            f"byte {pos} (file size {pos + len(header)})")
        length, crc = struct.unpack("<QI", header)
        if masked_crc32c(header[:8]) != crc:
            raise DataError(f"corrupt TFRecord shard {path}: bad length checksum of record "
                            f"{count} at byte {pos}")
        end = pos + 16 + length
        payload = None
        if payloads:
            payload, footer = f.read(length), f.read(4)
            if len(footer) < 4:
                raise DataError(f"truncated TFRecord shard {path}: record {count} needs "
                                f"{length} bytes, file ends {end - pos - 12 - len(payload)} "
                                "bytes early")
            if verify == "full" and masked_crc32c(payload) != struct.unpack("<I", footer)[0]:
                raise DataError(f"corrupt TFRecord shard {path}: bad payload checksum of "
                                f"record {count} at byte {pos}")
        elif end > size:
            raise DataError(f"truncated TFRecord shard {path}: record {count} needs "
                            f"{length} bytes, file ends {end - size} bytes early")
        else:
            f.seek(end)
        yield pos + 12, length, payload
        pos = end
        count += 1


def _decompressed(path, compression):
    """The decompressed bytes of a GZIP / ZLIB record file (DataError naming it)."""
    with info_lib.open_file(path, "rb") as f:
        raw = f.read()
    try:
        return gzip.decompress(raw) if compression == "GZIP" else zlib.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"corrupt or truncated {compression} TFRecord shard {path}: "
                        f"{e}") from None


def read_records(path, compression="NONE", verify="header"):
    """The payloads (bytes) of every record of one file, in order."""
    compression = check_compression(compression)
    if compression == "NONE":
        with info_lib.open_file(path, "rb") as f:
            for _, _, payload in scan_frames(f, path, payloads=True, verify=verify):
                yield payload
        return
    data = _decompressed(path, compression)
    for _, _, payload in scan_frames(io.BytesIO(data), path, payloads=True, verify=verify):
        yield payload


class RecordFile:
    """Random access to the records of one file: ``len(rf)``, ``rf[i]`` (bytes).

    An uncompressed file is indexed by its frame headers and read record by record; a
    compressed one is decompressed into memory once. ``verify="full"`` checks every
    payload checksum while indexing."""

    def __init__(self, path, compression="NONE", verify="header"):
        self.path = path
        compression = check_compression(compression)
        self._data = None
        if compression != "NONE" or verify == "full":
            self._data = (_decompressed(path, compression) if compression != "NONE" else
                          _read_all(path))
            frames = scan_frames(io.BytesIO(self._data), path, payloads=True, verify=verify)
        else:
            size = info_lib.getsize(path)
            with info_lib.open_file(path, "rb") as f:
                self._index = [(o, n) for o, n, _ in scan_frames(f, path, size)]
            return
        self._index = [(o, n) for o, n, _ in frames]

    def __len__(self):
        return len(self._index)

    def __getitem__(self, i):
        offset, length = self._index[i]
        if self._data is not None:
            return self._data[offset:offset + length]
        with info_lib.open_file(self.path, "rb") as f:
            f.seek(offset)
            return f.read(length)


def _read_all(path):
    with info_lib.open_file(path, "rb") as f:
        return f.read()


class RecordWriter:
    """Writes framed records (with both checksums) to `path`, compressed as asked; a
    context manager, like `tf.io.TFRecordWriter`."""

    def __init__(self, path, compression="NONE"):
        compression = check_compression(compression)
        self._file = info_lib.open_file(path, "wb")
        self._zip = None
        if compression == "GZIP":
            self._zip = gzip.GzipFile(fileobj=self._file, mode="wb")
        elif compression == "ZLIB":
            self._zip = zlib.compressobj()

    def write(self, payload):
        length = struct.pack("<Q", len(payload))
        frame = b"".join([length, struct.pack("<I", masked_crc32c(length)), payload,
                          struct.pack("<I", masked_crc32c(payload))])
        if isinstance(self._zip, gzip.GzipFile):
            self._zip.write(frame)
        elif self._zip is not None:
            self._file.write(self._zip.compress(frame))
        else:
            self._file.write(frame)

    def close(self):
        if isinstance(self._zip, gzip.GzipFile):
            self._zip.close()
        elif self._zip is not None:
            self._file.write(self._zip.flush())
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# ----------------------------------------------------------------------------- protobuf

_VARINT, _FIXED64, _LEN, _FIXED32 = 0, 1, 2, 5


def _varint(buf, pos):
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise ValueError("varint longer than 10 bytes")


def _fields(buf):
    """Yield ``(field number, wire type, value)`` of a protobuf message: an int for
    varints, bytes for length-delimited and fixed-size fields."""
    pos, end = 0, len(buf)
    while pos < end:
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == _VARINT:
            value, pos = _varint(buf, pos)
        elif wire in (_FIXED64, _FIXED32, _LEN):
            if wire == _LEN:
                size, pos = _varint(buf, pos)
            else:
                size = 8 if wire == _FIXED64 else 4
            if pos + size > end:
                raise ValueError(f"field {number} runs past the end of the message")
            value, pos = bytes(buf[pos:pos + size]), pos + size
        else:
            raise ValueError(f"unsupported wire type {wire} of field {number}")
        yield number, wire, value


def _int64(v):
    return v - (1 << 64) if v >= 1 << 63 else v


def _feature_values(buf):
    """The values of one `Feature` message: a list of bytes, floats or ints."""
    values = []
    for kind, _, body in _fields(buf):
        if kind not in (1, 2, 3):
            continue
        values = []
        for number, wire, v in _fields(body):
            if number != 1:
                continue
            if kind == 1:
                values.append(v)
            elif kind == 2:  # float: packed (LEN) or one fixed32
                values.extend(x for (x,) in struct.iter_unpack("<f", v))
            elif wire == _LEN:  # int64, packed
                pos = 0
                while pos < len(v):
                    x, pos = _varint(v, pos)
                    values.append(_int64(x))
            else:
                values.append(_int64(v))
    return values


def parse_example(data):
    """``{name: [values]}`` of a serialized `tf.train.Example`; ValueError if malformed."""
    out = {}
    for number, wire, features in _fields(data):
        if number != 1 or wire != _LEN:
            continue
        for entry_number, _, entry in _fields(features):
            if entry_number != 1:
                continue
            key, value = b"", b""
            for n, _, v in _fields(entry):
                if n == 1:
                    key = v
                elif n == 2:
                    value = v
            out[key.decode("utf-8")] = _feature_values(value)
    return out


def _len_field(number, payload):
    return _encode_varint(number << 3 | _LEN) + _encode_varint(len(payload)) + payload


def _encode_varint(v):
    v &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def encode_example(features):
    """A serialized `tf.train.Example` from ``{name: value or list}``: bytes / str values
    become a bytes_list, ints an int64_list (packed), floats a float_list (packed)."""
    entries = []
    for name, values in features.items():
        if not isinstance(values, (list, tuple)):
            values = [values]
        values = [v.encode() if isinstance(v, str) else v for v in values]
        if all(isinstance(v, bytes) for v in values):
            kind = _len_field(1, b"".join(_len_field(1, v) for v in values))
        elif all(isinstance(v, int) for v in values):
            kind = _len_field(3, _len_field(1, b"".join(_encode_varint(v) for v in values)))
        elif all(isinstance(v, float) for v in values):
            kind = _len_field(2, _len_field(1, struct.pack(f"<{len(values)}f", *values)))
        else:
            raise TypeError(f"feature {name!r}: values must be all bytes/str, all int or "
                            "all float")
        entries.append(_len_field(1, _len_field(1, name.encode()) + _len_field(2, kind)))
    return _len_field(1, b"".join(entries))


def make_example(image_bytes, image_format, height, width, label_png, filename):
    """A serialized `tf.train.Example` with the TF DeepLab / Model Garden keys (what the
    iseg converter writes)."""
    return encode_example({
        "image/encoded": image_bytes,
        "image/format": image_format,
        "image/height": int(height),
        "image/width": int(width),
        "image/channels": 3,
        "image/filename": filename,
        "image/segmentation/class/encoded": label_png,
        "image/segmentation/class/format": "png",
    })
