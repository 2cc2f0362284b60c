"""Text datasets on disk: readers for what users have (the LMDB layout of the common
text-recognition benchmarks, a folder of images with a `path<TAB>word` label file), the
synthetic renderer, and their conversion to sharded TFRecords.

Record keys: `image/encoded`, `image/format`, `image/height`, `image/width`,
`image/filename`, `image/text` (the word, UTF-8) and `image/char_boxes` (x0, y0, x1, y1
per character in pixels; empty when unknown). `<output_dir>/text_info.json` lists the
splits and their sizes.
"""

import io
import multiprocessing
import os

from PIL import Image

from iseg.datasets import info as info_lib

INFO_FILE = "text_info.json"
EXAMPLES_PER_SHARD = 5000


class TextDataError(ValueError):
    """Bad input data: the message names the file, the line or key, and the problem."""


# ----------------------------------------------------------------------------- readers


def _open_lmdb(path):
    try:
        import lmdb  # pylint: disable=import-outside-toplevel
    except ImportError:
        raise TextDataError(f"reading the LMDB dataset {path} needs the lmdb package "
                            "(pip install lmdb)") from None
    if not os.path.isdir(path):
        raise FileNotFoundError(f"LMDB folder not found: {path}")
    return lmdb.open(path, readonly=True, lock=False, readahead=False, meminit=False)


def read_lmdb(path):
    """Yield (key, encoded image bytes, word) from a benchmark LMDB folder: keys
    `num-samples`, `image-%09d` and `label-%09d`, numbered from 1."""
    env = _open_lmdb(path)
    try:
        with env.begin(write=False) as txn:
            count = txn.get(b"num-samples")
            if count is None:
                raise TextDataError(f"{path} is not an LMDB text dataset (no 'num-samples' "
                                    "key)")
            for i in range(1, int(count) + 1):
                image = txn.get(b"image-%09d" % i)
                label = txn.get(b"label-%09d" % i)
                if image is None or label is None:
                    missing = "image" if image is None else "label"
                    raise TextDataError(f"{path}: {missing}-{i:09d} is missing "
                                        f"(num-samples is {int(count)})")
                yield f"{i:09d}", bytes(image), label.decode("utf-8")
    finally:
        env.close()


def read_label_file(path):
    """Yield (image path, encoded bytes, word) for each `path<TAB>word` line of a label
    file (image paths relative to the file's folder; blank lines skipped)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"label file not found: {path}")
    root = os.path.dirname(os.path.abspath(path))
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if "\t" not in line:
            raise TextDataError(f"{path}:{number}: expected 'path<TAB>word', got {line!r}")
        name, word = line.split("\t", 1)
        image_path = os.path.join(root, name)
        if not os.path.isfile(image_path):
            raise TextDataError(f"{path}:{number}: image not found: {image_path}")
        with open(image_path, "rb") as im:
            yield name, im.read(), word


# ----------------------------------------------------------------------------- writing


def make_text_example(encoded, word, boxes=None, filename=""):
    """A serialized `tf.train.Example` (checks that the image decodes)."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    try:
        with Image.open(io.BytesIO(encoded)) as im:
            width, height = im.size
            fmt = (im.format or "png").lower()
    except Exception as e:  # noqa: BLE001 - any decoder error is reported the same way
        raise TextDataError(f"{filename}: not a readable image ({e})") from None

    def feature(kind, values):
        if kind == "bytes":
            return tf.train.Feature(bytes_list=tf.train.BytesList(value=values))
        if kind == "int":
            return tf.train.Feature(int64_list=tf.train.Int64List(value=values))
        return tf.train.Feature(float_list=tf.train.FloatList(value=values))

    flat = [] if boxes is None else [float(v) for v in list(boxes.reshape(-1))]
    features = {
        "image/encoded": feature("bytes", [encoded]),
        "image/format": feature("bytes", [fmt.encode()]),
        "image/height": feature("int", [height]),
        "image/width": feature("int", [width]),
        "image/filename": feature("bytes", [filename.encode()]),
        "image/text": feature("bytes", [word.encode("utf-8")]),
        "image/char_boxes": feature("float", flat),
    }
    return tf.train.Example(features=tf.train.Features(feature=features)).SerializeToString()


def write_split(examples, output_dir, split, count, num_shards=None, compression="NONE"):
    """Write `count` examples (an iterable of (filename, encoded, word, boxes or None)) as
    `split-iiiii-of-nnnnn.tfrecord` shards; returns the number written."""
    from iseg.datasets import tfrecord  # pylint: disable=import-outside-toplevel

    os.makedirs(output_dir, exist_ok=True)
    num_shards = num_shards or max(1, -(-count // EXAMPLES_PER_SHARD))
    bounds = [round(i * count / num_shards) for i in range(num_shards + 1)]
    written, shard, writer = 0, -1, None
    try:
        for name, encoded, word, boxes in examples:
            while written >= bounds[shard + 1]:
                if writer is not None:
                    writer.close()
                shard += 1
                path = os.path.join(output_dir, info_lib.shard_name(split, shard, num_shards))
                writer = tfrecord.record_writer(path, compression)
            writer.write(make_text_example(encoded, word, boxes, name))
            written += 1
    finally:
        if writer is not None:
            writer.close()
    if written != count:
        raise TextDataError(f"split {split!r}: expected {count} examples, read {written}")
    return written


def update_info(output_dir, split, count, has_boxes, compression="NONE"):
    path = os.path.join(output_dir, INFO_FILE)
    info = load_text_info(output_dir) if os.path.isfile(path) else {
        "task": "text", "num_examples": {}, "has_boxes": {}, "compression": compression}
    info["num_examples"][split] = int(count)
    info["has_boxes"][split] = bool(has_boxes)
    info_lib.write_json_atomic(path, info)
    return info


def load_text_info(data_dir):
    import json  # pylint: disable=import-outside-toplevel

    path = os.path.join(data_dir, INFO_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: {data_dir} is not a converted text "
                                "dataset (run `python -m iseg.cli.convert --dataset=text_...`)")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def convert_text(source, output_dir, split, layout, num_shards=None, compression="NONE"):
    """Convert an LMDB folder (`layout="lmdb"`) or a label file (`layout="folder"`) into
    the records of `split`; returns the number of examples."""
    readers = {"lmdb": read_lmdb, "folder": read_label_file}
    if layout not in readers:
        raise ValueError(f"layout must be one of {', '.join(readers)}, got {layout!r}")
    items = list(readers[layout](source))
    if not items:
        raise TextDataError(f"{source}: no examples")
    n = write_split(((name, data, word, None) for name, data, word in items), output_dir,
                    split, len(items), num_shards, compression)
    update_info(output_dir, split, n, has_boxes=False, compression=compression)
    return n


# ----------------------------------------------------------------------------- synthetic


def _render(args):
    from iseg.text import synth  # pylint: disable=import-outside-toplevel

    seed, index, fonts, options, curved = args
    word, png, boxes = synth.render_example(seed, index, fonts, options, curved)
    return f"synth_{index:07d}", png, word, boxes


def generate_synth(output_dir, splits, *, options=None, seed=0, fonts=None, num_workers=2,
                   num_shards=None, compression="NONE"):
    """Render synthetic splits into TFRecords. `splits`: {name: (count, curved)} with
    `curved` a probability (None: `options.curved`); each split has its own seed stream,
    so a split's examples do not depend on the others or on `num_workers`."""
    from iseg.text import synth  # pylint: disable=import-outside-toplevel

    options = options or synth.SynthOptions()
    fonts = synth.find_fonts(fonts)
    for offset, (split, (count, curved)) in enumerate(sorted(splits.items())):
        split_seed = int(seed) * 1000 + offset
        if curved is not None:
            import dataclasses  # pylint: disable=import-outside-toplevel
            split_options = dataclasses.replace(options, curved=float(curved))
        else:
            split_options = options
        jobs = [(split_seed, i, fonts, split_options, None) for i in range(count)]
        if num_workers > 1:
            with multiprocessing.get_context("spawn").Pool(num_workers) as pool:
                n = write_split(pool.imap(_render, jobs, chunksize=64), output_dir, split,
                                count, num_shards, compression)
        else:
            n = write_split(map(_render, jobs), output_dir, split, count, num_shards,
                            compression)
        update_info(output_dir, split, n, has_boxes=True, compression=compression)
    return load_text_info(output_dir)
