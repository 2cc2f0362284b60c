"""Convert a dataset in its own layout into sharded TFRecords plus ``dataset_info.json``.

`convert_dataset(dataset, data_dir, output_dir, splits=None, num_shards=None,
compression="NONE", num_workers=None, progress=True, **spec_options)`:

- lists all pairs of all requested splits first (a missing file listed in a split file
  stops the run before anything is written);
- decodes and checks every example in worker processes (image readable, label single
  channel, same size as the image, every raw value valid for the spec) and maps raw labels
  to train ids with the spec's table;
- writes ``{split}-{i:05d}-of-{n:05d}.tfrecord`` into a staging folder beside
  `output_dir`, and only after every split succeeded moves the shards in and writes
  ``dataset_info.json`` last (atomic rename). A failed run leaves no shards or info behind.

Worker processes only use numpy and PIL; records are built and written by the parent.
"""

import functools
import importlib.util
import io
import math
import multiprocessing
import os
import shutil
import tempfile
import time

import numpy as np
from absl import logging
from PIL import Image

from iseg.datasets import info as info_lib
from iseg.datasets import records
from iseg.datasets.layouts import ConversionError, list_pairs, read_raw_label
from iseg.datasets.specs import get_dataset_spec

EXAMPLES_PER_SHARD = 500


def _load_image(path):
    """(bytes, format, height, width) keeping JPEG/PNG as they are; others re-encoded."""
    try:
        with open(path, "rb") as f:
            data = f.read()
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            fmt, mode, (w, h) = im.format, im.mode, im.size
            if fmt in ("JPEG", "PNG") and mode in ("RGB", "L"):
                return data, fmt.lower(), h, w
            buf = io.BytesIO()
            im.convert("RGB").save(buf, format="PNG")
            return buf.getvalue(), "png", h, w
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ConversionError(f"unreadable image {path}: {e}") from None


def encode_pair(pair, lut, num_classes, dataset_name, raw_range):
    """Decode, check and encode one pair; returns plain bytes/ints/arrays (picklable)."""
    image, fmt, h, w = _load_image(pair.image)
    raw = read_raw_label(pair.label)
    if raw.ndim != 2:
        raise ConversionError(f"label file {pair.label} has shape {raw.shape}: expected 2-D")
    if raw.shape != (h, w):
        raise ConversionError(
            f"size mismatch: image {pair.image} is {w}x{h} (WxH) but label {pair.label} is "
            f"{raw.shape[1]}x{raw.shape[0]}"
        )
    raw = raw.astype(np.int64)
    lo, hi = int(raw.min()), int(raw.max())
    if lo < 0 or hi > 255:
        value = lo if lo < 0 else hi
        raise ConversionError(
            f"label value {value} in {pair.label} is outside the valid range for dataset "
            f"{dataset_name!r} (raw values {raw_range}; classes 0..{num_classes - 1}, ignore 255)"
        )
    mapped = lut[raw]
    if (mapped < 0).any():
        bad = np.unique(raw[mapped < 0])
        raise ConversionError(
            f"label value {int(bad[0])} in {pair.label} is outside the valid range for dataset "
            f"{dataset_name!r} (raw values {raw_range}; classes 0..{num_classes - 1}, ignore "
            f"255); invalid values found: {bad[:10].tolist()}"
        )
    mapped = mapped.astype(np.uint8)
    counts = np.bincount(mapped.ravel(), minlength=256)
    buf = io.BytesIO()
    Image.fromarray(mapped, mode="L").save(buf, format="PNG")
    return {
        "key": pair.key,
        "image": image,
        "format": fmt,
        "height": h,
        "width": w,
        "label": buf.getvalue(),
        "counts": counts[:num_classes].astype(np.int64),
        "ignored": int(counts[255]),
    }


def default_num_shards(num_examples):
    return max(1, min(num_examples, math.ceil(num_examples / EXAMPLES_PER_SHARD)))


def _iter_encoded(pairs, encode, num_workers):
    if num_workers <= 1:
        for p in pairs:
            yield encode(p)
        return
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(num_workers) as pool:
        yield from pool.imap(encode, pairs, chunksize=4)


WRITERS = ("auto", "tensorflow", "python")


def open_record_writer(path, compression, writer="auto"):
    """A record writer: TensorFlow's (its checksums run in C++) for ``"tensorflow"``, or
    for ``"auto"`` when TensorFlow is installed; else the plain-Python
    `records.RecordWriter` (the same bytes)."""
    if writer not in WRITERS:
        raise ValueError(f"writer must be one of {WRITERS}, got {writer!r}")
    if writer == "auto":
        writer = "tensorflow" if importlib.util.find_spec("tensorflow") else "python"
    if writer == "python":
        return records.RecordWriter(path, compression)
    from iseg.datasets import tfrecord  # pylint: disable=import-outside-toplevel

    return tfrecord.record_writer(path, compression)


def _write_split(spec, split, pairs, staging, num_shards, compression, num_workers, progress,
                 writer_kind):
    from iseg.progress import progress_bar  # pylint: disable=import-outside-toplevel

    n = len(pairs)
    if isinstance(num_shards, dict):
        num_shards = num_shards.get(split)
    if n == 0:
        raise ValueError(f"split {split!r} of {spec.name} has no examples")
    num_shards = num_shards or default_num_shards(n)
    if num_shards > n:
        raise ValueError(f"split {split!r} has {n} examples, fewer than --num_shards={num_shards}")
    encode = functools.partial(
        encode_pair,
        lut=spec.lut,
        num_classes=spec.num_classes,
        dataset_name=spec.name,
        raw_range=spec.describe_raw_range(),
    )
    bounds = [round(i * n / num_shards) for i in range(num_shards + 1)]
    counts = np.zeros(spec.num_classes, np.int64)
    ignored = 0
    files = []
    writer = None
    shard = -1
    bar = progress_bar(total=n, desc=f"{spec.name}/{split}", enabled=progress)
    try:
        for i, ex in enumerate(_iter_encoded(pairs, encode, num_workers)):
            while i >= bounds[shard + 1]:
                if writer is not None:
                    writer.close()
                shard += 1
                name = info_lib.shard_name(split, shard, num_shards)
                files.append(name)
                writer = open_record_writer(os.path.join(staging, name), compression,
                                            writer_kind)
            writer.write(
                records.make_example(
                    ex["image"], ex["format"], ex["height"], ex["width"], ex["label"], ex["key"]
                )
            )
            counts += ex["counts"]
            ignored += ex["ignored"]
            bar.update(1)
    finally:
        bar.close()
        if writer is not None:
            writer.close()
    return {
        "num_examples": n,
        "num_shards": num_shards,
        "files": files,
        "class_pixel_counts": counts.tolist(),
        "ignored_pixel_count": ignored,
    }


def _commit(staging, output_dir, split_infos, info):
    """Move finished shards into `output_dir`; dataset_info.json is written last."""
    info_path = os.path.join(output_dir, info_lib.INFO_FILE)
    if not os.path.isdir(output_dir):
        info_lib.write_json_atomic(os.path.join(staging, info_lib.INFO_FILE), info)
        os.rename(staging, output_dir)
        return
    if os.path.isfile(info_path):
        os.remove(info_path)  # the folder is incomplete until the new info lands
    for split in split_infos:
        for name in os.listdir(output_dir):
            m = info_lib.SHARD_RE.match(name)
            if m and m.group("split") == split:
                os.remove(os.path.join(output_dir, name))
    for split_info in split_infos.values():
        for name in split_info["files"]:
            os.replace(os.path.join(staging, name), os.path.join(output_dir, name))
    info_lib.write_json_atomic(info_path, info)


def convert_dataset(
    dataset,
    data_dir,
    output_dir,
    splits=None,
    num_shards=None,
    compression="NONE",
    num_workers=None,
    progress=True,
    writer="auto",
    **spec_options,
):
    """Convert `dataset` (name or DatasetSpec) from `data_dir` into `output_dir`.

    `num_shards`: int, or a dict {split: int}; default about one shard per 500 examples.
    `writer`: the record writer (see `open_record_writer`).
    Returns the info dict written to ``dataset_info.json``. Converting some splits into a
    folder that already holds others keeps the others (their entries are merged).
    """
    spec = get_dataset_spec(dataset, **spec_options)
    compression = records.check_compression(compression)
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(f"--data_dir {data_dir} does not exist")
    if splits is None:
        splits = [s for s in ("train", "val") if s in spec.splits]
    if isinstance(splits, str):
        splits = [s.strip() for s in splits.split(",") if s.strip()]
    pairs = {s: list_pairs(spec, data_dir, s) for s in splits}
    total = sum(len(p) for p in pairs.values())
    if num_workers is None:
        num_workers = min(os.cpu_count() or 1, 8) if total >= 64 else 0

    output_dir = os.path.abspath(output_dir)
    parent = os.path.dirname(output_dir)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(output_dir)}.partial-", dir=parent)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(staging, 0o777 & ~umask)
    try:
        split_infos = {}
        for s in splits:
            logging.info("converting %s/%s: %d examples", spec.name, s, len(pairs[s]))
            split_infos[s] = _write_split(
                spec, s, pairs[s], staging, num_shards, compression, num_workers, progress,
                writer)
        old = {}
        old_path = os.path.join(output_dir, info_lib.INFO_FILE)
        if os.path.isfile(old_path):
            old = info_lib.load_dataset_info(output_dir)
            if old.get("dataset") != spec.name or old.get("compression") != compression:
                old = {}
        merged = dict(old.get("splits", {})) if old else {}
        merged.update(split_infos)
        info = spec.to_info()
        info.update(
            {
                "format": "tf.train.Example (image/encoded, image/segmentation/class/encoded)",
                "labels": "train_ids",
                "compression": compression,
                "splits": merged,
                "num_examples": {k: v["num_examples"] for k, v in merged.items()},
                "class_pixel_counts": {k: v["class_pixel_counts"] for k, v in merged.items()},
                "source_dir": os.path.abspath(data_dir),
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
        )
        if old:
            stale = [s for s in merged if s not in split_infos]
            for s in stale:  # keep the other splits' files when converting some splits
                for name in merged[s]["files"]:
                    if not os.path.isfile(os.path.join(output_dir, name)):
                        raise ValueError(f"{output_dir} lists {name} but the file is missing")
        _commit(staging, output_dir, split_infos, info)
        return info
    finally:
        if os.path.isdir(staging):
            shutil.rmtree(staging, ignore_errors=True)
