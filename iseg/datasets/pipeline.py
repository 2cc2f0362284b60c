"""The tf.data input pipeline over converted (or foreign) TFRecord folders.

``build_dataset(data_dir, split, *, training, batch_size, crop_size=(513, 513),
normalization="minus_one_to_one", augment=AugmentOptions(), seed=None,
deterministic=False, input_context=None, repeat=None, shuffle_buffer=512,
pad_to_multiple=None, **options)``

`augment` (an `augment.AugmentOptions`: scales, flip, brightness, photometric distortion)
applies to training only.

Training yields ``(images float32 [B, ch, cw, 3], labels int32 [B, ch, cw])`` (ignore 255
in padding, ``drop_remainder=True``). With ``resample="device"`` training yields the
views instead -- a dict of the uint8 source windows (padded to the largest in the batch),
their sampling positions and colour parameters (`augment.augment_views`) -- and
``resample_views(batch, normalization)`` turns a batch of them into the same
``(images, labels)`` inside the training step, on the accelerator: the host then only
reads and decodes (the trainer does this on GPUs, see `--resample`).

Evaluation yields ``(features, labels)`` with ``features = {"image", "height", "width",
"filename"}``: the whole image, normalised, padded bottom/right to `crop_size` if smaller,
else to a multiple of `pad_to_multiple` (padding is 0 after normalisation, i.e. the mean
pixel), the original height/width, and labels padded with 255. Eval batches use
``padded_batch`` (pad value 0 / 255), so any batch size works.

Extra keyword options:
  dataset: spec name (or DatasetSpec); needed when `data_dir` has no dataset_info.json
    (records written by TF DeepLab / Model Garden / the original iSeg tools).
  raw_labels: apply the spec's raw -> train id table on read (for foreign records that
    store raw labels, e.g. ADE20K 0..150); default False (iseg records hold train ids).
  record_format: "auto" (default), "example", "iseg_float" or "iseg_jpeg".
  compression: "NONE" / "GZIP" / "ZLIB"; default from dataset_info.json, else NONE.
  file_pattern: glob (relative to data_dir) overriding the shard search.
  check: "header" (default: verify the framing of every uncompressed shard before
    reading, errors name the shard), "full" (read every record once), or None.
  skip_corrupt: drop unreadable records instead of failing (each drop is logged; a shard
    that fails the check is logged and read as far as possible).
  validate_labels: assert every label is in [0, K) or 255 (default True).
  cycle_length: number of shards read in parallel (default: min(shards, 8) in training,
    1 in evaluation so records come in file order).
  resample: "host" (default) or "device" (training only, see above).
  keep_filenames: keep only the records whose ``image/filename`` is in this collection
    (a partition of a split, `iseg.semi.partition`); records are matched by a 62-bit
    hash of the name, before shuffling.
  drop_labels: replace each label by zeros before augmenting (unlabeled data: the
    padding is then the only ignore label, and no label value reaches the batch).

With ``normalization=None`` training images stay on the 0..255 scale (padding 0).

Normalisation: ``"minus_one_to_one"`` is ``x / 127.5 - 1``; ``"imagenet"`` is
``(x - mean) / std`` with the ImageNet RGB mean/std on the 0..255 scale.
"""

import random
import re

import tensorflow as tf
from absl import logging

from iseg.datasets import augment as augment_lib
from iseg.datasets.augment import AugmentOptions
from iseg.datasets.np_augment import (  # noqa: F401  (re-exported)
    DEFAULT_NORMALIZATION,
    NORMALIZATIONS,
    input_normalization,
)
from iseg.datasets import info as info_lib
from iseg.datasets import tfrecord
from iseg.datasets.specs import IGNORE_LABEL, get_dataset_spec
from iseg.errors import DataError

IMAGENET_MEAN = augment_lib.IMAGENET_MEAN
IMAGENET_STD = augment_lib.IMAGENET_STD
RESAMPLE = ("host", "device")
AUTOTUNE = tf.data.AUTOTUNE


def _check_mode(mode):
    if mode not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {mode!r}")


def normalize(images, mode="minus_one_to_one"):
    """float32 0..255 -> network input."""
    _check_mode(mode)
    images = tf.cast(images, tf.float32)
    if mode == "minus_one_to_one":
        return images / 127.5 - 1.0
    return (images - tf.constant(IMAGENET_MEAN)) / tf.constant(IMAGENET_STD)


def denormalize(images, mode="minus_one_to_one"):
    """Inverse of `normalize`: network input -> float32 0..255."""
    _check_mode(mode)
    images = tf.cast(images, tf.float32)
    if mode == "minus_one_to_one":
        return (images + 1.0) * 127.5
    return images * tf.constant(IMAGENET_STD) + tf.constant(IMAGENET_MEAN)


def mean_pixel(mode="minus_one_to_one"):
    """The 0..255 pixel value that normalises to 0 (the padding value)."""
    _check_mode(mode)
    return (127.5, 127.5, 127.5) if mode == "minus_one_to_one" else IMAGENET_MEAN


def resample_views(views, normalization="minus_one_to_one"):
    """A batch from ``build_dataset(..., resample="device")`` -> ``(images, labels)``, as
    ``resample="host"`` yields them (see `augment.resample_views`); `normalization`
    None leaves the images on the 0..255 scale."""
    if normalization is not None:
        _check_mode(normalization)
    return augment_lib.resample_views(views, normalization, IGNORE_LABEL)


def _resolve_source(data_dir, split, dataset, compression, file_pattern):
    try:
        info = info_lib.load_dataset_info(data_dir)
    except FileNotFoundError:
        if dataset is None:
            raise
        info = None
    spec = get_dataset_spec(dataset) if dataset is not None else None
    if info is not None:
        num_classes = info["num_classes"]
        if compression is None:
            compression = info.get("compression", "NONE")
        if info.get("splits") and split not in info["splits"] and file_pattern is None:
            raise ValueError(
                f"split {split!r} not in {data_dir} (has: {', '.join(info['splits'])})"
            )
    else:
        num_classes = spec.num_classes
    files = info_lib.list_shards(data_dir, split, file_pattern)
    return files, num_classes, spec, compression or "NONE"


_BAD_LABEL = "label value outside [0, num_classes) and not ignore 255 in record"
_FILENAME = {"image/filename": tf.io.FixedLenFeature((), tf.string, default_value="")}


def _record_filename(record):
    return tf.io.parse_single_example(record, _FILENAME)["image/filename"]


def _shard_filenames(path, compression):
    names = tfrecord.read_records(path, compression).map(_record_filename)
    return [name.decode() for name in names.as_numpy_iterator()]


def record_filenames(data_dir, split):
    """The ``image/filename`` of every record of `split`, in file order ('' where a
    record has none)."""
    files, _, _, compression = _resolve_source(data_dir, split, None, None, None)
    return [name for path in files for name in _shard_filenames(path, compression)]


def locate_record(data_dir, split, filename):
    """(shard, index) of the record of `split` whose image/filename is `filename`, or
    None."""
    files, _, _, compression = _resolve_source(data_dir, split, None, None, None)
    for path in files:
        names = _shard_filenames(path, compression)
        if filename in names:
            return path, names.index(filename)
    return None


_HASH_BUCKETS = 2**62


def filename_filter(keep_filenames):
    """A predicate serialized record -> bool: its image/filename is in `keep_filenames`
    (compared by 62-bit hash: stateless, so input iterators stay checkpointable)."""
    names = list(set(keep_filenames))
    hashes = tf.strings.to_hash_bucket_fast(names, _HASH_BUCKETS).numpy() if names else []
    table = tf.constant(sorted(set(hashes)) or [-1], tf.int64)  # (-1: matches nothing)

    def keep(record):
        h = tf.strings.to_hash_bucket_fast(_record_filename(record), _HASH_BUCKETS)
        i = tf.minimum(tf.searchsorted(table, h[None])[0], tf.size(table) - 1)
        return tf.equal(table[i], h)

    return keep


def input_error(data_dir, split, error):
    """A one-line DataError for an error the input pipeline of `split` raised while
    iterating (a record with an invalid label, an unreadable record)."""
    text = str(getattr(error, "message", error))
    bad = re.search(re.escape(_BAD_LABEL) + r"\] \[(.*?)\] \[values:\] \[(.*?)\]", text)
    if bad:
        where = locate_record(data_dir, split, bad.group(1))
        where = f" ({where[0]}, record {where[1]})" if where else ""
        what = (f"label value outside [0, num_classes) that is not the ignore label 255 in "
                f"record {bad.group(1)}{where}: values {bad.group(2)}")
    else:
        lines = [line.strip() for line in text.splitlines() if line.strip() and not
                 line.strip().startswith(("[[", "Detected at", "<stack", "Graph execution"))]
        what = f"reading {data_dir} ({split}): {lines[-1] if lines else text}"
    return DataError(f"{what}; pass --skip_corrupt to drop such records and go on")


def _label_mapper(spec, num_classes, raw_labels, validate):
    lut = None
    if raw_labels:
        if spec is None:
            raise ValueError("raw_labels=True needs dataset=NAME to know the mapping")
        lut = tf.constant(spec.lut, tf.int32)

    def fix(label, filename):
        if lut is not None:
            label = tf.cast(label, tf.int32)
            inside = (label >= 0) & (label < 256)
            label = tf.where(inside, tf.gather(lut, tf.clip_by_value(label, 0, 255)), -1)
        if not (validate or lut is not None):
            return label
        ok = tf.reduce_all(
            ((label >= 0) & (label < num_classes)) | (label == IGNORE_LABEL))

        def fail():  # only built into the false branch: the error path costs nothing
            check = tf.debugging.Assert(
                False,
                [_BAD_LABEL, filename, "values:", tf.unique(tf.reshape(label, [-1]))[0]],
                summarize=20,
            )
            with tf.control_dependencies([check]):
                return tf.identity(label)

        return tf.cond(ok, lambda: label, fail)

    return fix


def build_dataset(
    data_dir,
    split,
    *,
    training,
    batch_size,
    crop_size=(513, 513),
    normalization="minus_one_to_one",
    augment=AugmentOptions(),
    seed=None,
    deterministic=False,
    input_context=None,
    repeat=None,
    shuffle_buffer=512,
    pad_to_multiple=None,
    dataset=None,
    raw_labels=False,
    record_format="auto",
    compression=None,
    file_pattern=None,
    check="header",
    skip_corrupt=False,
    validate_labels=True,
    cycle_length=None,
    resample="host",
    keep_filenames=None,
    drop_labels=False,
):
    """A batched `tf.data.Dataset` for training or evaluation (see module docstring)."""
    if normalization is not None or not training:
        _check_mode(normalization)
    if resample not in RESAMPLE:
        raise ValueError(f"resample must be one of {RESAMPLE}, got {resample!r}")
    if training and crop_size is None:
        raise ValueError("training needs a crop_size")
    if check not in ("header", "full", None):
        raise ValueError(f"check must be 'header', 'full' or None, got {check!r}")
    files, num_classes, spec, compression = _resolve_source(
        data_dir, split, dataset, compression, file_pattern
    )
    _check_shards(files, compression, check, skip_corrupt)
    record_format, label_dtype = tfrecord.resolve_format(files, record_format, compression)
    decode = tfrecord.make_decoder(record_format, label_dtype, lazy_image=training)
    fix_label = _label_mapper(spec, num_classes, raw_labels, validate_labels)

    def read(record):  # (example dict, label with its values checked / mapped)
        ex = decode(record)
        if drop_labels:
            return ex, tf.zeros_like(ex["label"])
        return ex, fix_label(ex["label"], ex["filename"])

    if repeat is None:
        repeat = training
    if deterministic and seed is None:
        seed = 0
    if seed is None:
        seed = random.SystemRandom().randrange(2**31)
    if input_context is not None:
        batch_size = input_context.get_per_replica_batch_size(batch_size)
    ds = _records(files, compression, training=training, seed=seed,
                  deterministic=deterministic, input_context=input_context, repeat=repeat,
                  shuffle_buffer=shuffle_buffer, cycle_length=cycle_length,
                  keep=None if keep_filenames is None else filename_filter(keep_filenames))
    if training:
        ds = _training_batches(ds, read, batch_size, crop_size, normalization, seed,
                               deterministic, skip_corrupt, resample, augment)
    else:
        ds = _eval_batches(ds, read, batch_size, crop_size, normalization, pad_to_multiple,
                           skip_corrupt)
    ds = _finish(ds, training, deterministic, input_context)
    logging.info(
        "input %s/%s: %d shards, %s records, batch %d, training=%s",
        data_dir, split, len(files), record_format, batch_size, training,
    )
    return ds


def _check_shards(files, compression, check, skip_corrupt):
    if not check:
        return
    try:
        tfrecord.check_shards(files, compression, full=check == "full")
    except DataError as e:
        if not skip_corrupt:
            raise DataError(f"{e}; pass --skip_corrupt to drop unreadable records and "
                            "go on") from None
        logging.warning("%s -- skip_corrupt=True: reading on, dropping unreadable records", e)


def _records(files, compression, *, training, seed, deterministic, input_context, repeat,
             shuffle_buffer, cycle_length, keep=None):
    """The serialized records of this input pipeline's share: shards shuffled and
    interleaved in training (read one after another in evaluation, so records come in
    file order), those `keep` accepts (all when None), records shuffled in training,
    repeated if asked."""
    shard_records = False
    ds = tf.data.Dataset.from_tensor_slices(files)
    if input_context is not None and input_context.num_input_pipelines > 1:
        if len(files) >= input_context.num_input_pipelines:
            ds = ds.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
        else:
            shard_records = True
    if training and len(files) > 1:
        ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    ctype = tfrecord.compression_type(compression)
    cycle = cycle_length or (min(len(files), 8) if training else 1)
    read = lambda f: tfrecord.read_records(f, ctype)  # noqa: E731
    if cycle > 1:
        ds = ds.interleave(
            read, cycle_length=cycle, num_parallel_calls=cycle,
            deterministic=deterministic or not training,
        )
    else:
        ds = ds.interleave(read, cycle_length=1)
    if keep is not None:
        ds = ds.filter(keep)
    if shard_records:
        ds = ds.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
    if training:
        ds = ds.shuffle(shuffle_buffer, seed=seed + 1, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    return ds


def _training_batches(ds, read, batch_size, crop_size, normalization, seed, deterministic,
                      skip_corrupt, resample, augment):
    """Random training views (each record with its own stateless seed), batched: crops
    (``resample="host"``) or views to resample on the device."""
    crop = tuple(int(c) for c in crop_size)
    seeds = tf.data.Dataset.random(seed=seed + 2).map(
        lambda r: tf.stack([r, tf.constant(seed, tf.int64)])
    )
    ds = tf.data.Dataset.zip((ds, seeds))

    def train_map(record, element_seed):
        ex, label = read(record)
        if resample == "device":
            return augment_lib.augment_views(
                ex.get("image"), label, element_seed, crop, augment,
                encoded=ex.get("encoded"))
        img, lab, _ = augment_lib.augment(
            ex.get("image"), label, element_seed, crop, augment, encoded=ex.get("encoded"),
            normalization=normalization, with_valid=False, pad=False)
        return img, lab

    ds = ds.map(train_map, num_parallel_calls=AUTOTUNE, deterministic=deterministic)
    if skip_corrupt:
        ds = ds.ignore_errors(log_warning=True)
    if resample == "device":  # windows padded to the largest in the batch
        return ds.padded_batch(batch_size, drop_remainder=True)
    # the bottom/right padding to the crop is done while batching (one copy), and
    # labels stay in their record dtype (uint8) until the whole batch is cast
    lab_dtype = ds.element_spec[1].dtype
    ds = ds.padded_batch(
        batch_size, padded_shapes=([*crop, 3], list(crop)),
        padding_values=(0.0, tf.constant(IGNORE_LABEL, lab_dtype)), drop_remainder=True,
    )
    if lab_dtype != tf.int32:
        ds = ds.map(lambda img, lab: (img, tf.cast(lab, tf.int32)))
    return ds


def _eval_batches(ds, read, batch_size, crop_size, normalization, pad_to_multiple,
                  skip_corrupt):
    """Whole images with their size and filename, padded (see `_eval_target`), batched."""

    def eval_map(record):
        ex, label = read(record)
        label = tf.cast(label[..., 0], tf.int32)
        h, w = ex["height"], ex["width"]
        th, tw = _eval_target(h, w, crop_size, pad_to_multiple)
        img = normalize(ex["image"], normalization)
        img = tf.pad(img, [[0, th - h], [0, tw - w], [0, 0]])
        lab = tf.pad(label, [[0, th - h], [0, tw - w]], constant_values=IGNORE_LABEL)
        feats = {"image": img, "height": h, "width": w, "filename": ex["filename"]}
        return feats, lab

    ds = ds.map(eval_map, num_parallel_calls=AUTOTUNE, deterministic=True)
    if skip_corrupt:
        ds = ds.ignore_errors(log_warning=True)
    return ds.padded_batch(
        batch_size,
        padded_shapes=(
            {"image": [None, None, 3], "height": [], "width": [], "filename": []},
            [None, None],
        ),
        padding_values=(
            {"image": 0.0, "height": 0, "width": 0, "filename": ""},
            IGNORE_LABEL,
        ),
        drop_remainder=False,
    )


def _finish(ds, training, deterministic, input_context):
    """Prefetch and the dataset options (determinism, threading, no auto-sharding)."""
    ds = ds.prefetch(AUTOTUNE)
    options = tf.data.Options()
    options.deterministic = bool(deterministic) or not training
    # parallelism comes from the parallel map; ops inside one element run single-threaded
    options.threading.max_intra_op_parallelism = 1
    if input_context is not None:  # sharded here; tf.distribute must not shard again
        options.experimental_distribute.auto_shard_policy = (
            tf.data.experimental.AutoShardPolicy.OFF
        )
    return ds.with_options(options)


def _eval_target(h, w, crop_size, multiple):
    def one(n, c):
        if multiple:
            up = (n + multiple - 1) // multiple * multiple
        else:
            up = n
        if c is None:
            return up
        return tf.where(n <= c, tf.constant(c, tf.int32), up)

    ch, cw = crop_size if crop_size is not None else (None, None)
    return one(h, ch), one(w, cw)
