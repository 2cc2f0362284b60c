"""The zipped input of semi-supervised training.

One batch is a dict: ``image`` float32 [B, H, W, 3] and ``label`` int32 [B, H, W] (the
labeled stream: the supervised weak augmentation -- scale, crop with ignore padding, flip,
brightness as configured), ``u_image`` [Bu, H, W, 3] and ``u_ignore`` bool [Bu, H, W]
(True on padding) from the unlabeled stream, and ``u_image2`` / ``u_ignore2`` from a second,
independently shuffled and augmented unlabeled stream when the method mixes with one.
Images are NOT normalised (0..255, padding 0): the method normalises after its strong
augmentation. Every stream repeats forever, so the labeled one is oversampled to the
unlabeled length; each is `iseg.datasets.pipeline.build_dataset` on a partition of the
records, so the iterator is checkpointable like the supervised one.

With ``resample="device"`` the streams yield views (``views``, ``u_views``, ``u_views2``)
and `resolve_batch` resamples them inside the training step, on the accelerator.
"""

import tensorflow as tf

from iseg.datasets.pipeline import build_dataset, record_filenames, resample_views
from iseg.datasets.specs import IGNORE_LABEL
from iseg.semi import partition as partition_lib

_STREAM_SEED_STEP = 7919  # seed offset between the streams (a prime: no shared draws)


def make_partition(cfg):
    """(labeled, unlabeled, unlabeled_split): record filenames of `cfg.labeled_split` that
    are labeled, those of `unlabeled_split` (default: the labeled split) that are unlabeled
    (None: all of it)."""
    split = cfg.labeled_split
    names = record_filenames(cfg.data_dir, split)
    unlabeled_split = cfg.unlabeled_split or split
    if cfg.labeled_fraction is not None:
        labeled, unlabeled = partition_lib.by_fraction(names, cfg.labeled_fraction, cfg.seed)
    else:
        pool = (record_filenames(cfg.data_dir, unlabeled_split)
                if cfg.unlabeled_list and unlabeled_split != split else None)
        labeled, unlabeled = partition_lib.by_lists(
            names, cfg.labeled_list, cfg.unlabeled_list, pool,
            f"the {split} split of {cfg.data_dir}",
            f"the {unlabeled_split} split of {cfg.data_dir}")
    if cfg.unlabeled_split and not cfg.unlabeled_list:
        unlabeled = None
    return labeled, unlabeled, unlabeled_split


def unlabeled_batch_size(cfg):
    return cfg.unlabeled_batch_size or cfg.batch_size


def make_semi_dataset_fn(cfg, resample, streams, partition, augment):
    """`fn(input_context, seed) -> tf.data.Dataset` of zipped batches (module docstring).

    `streams`: 1 or 2 unlabeled streams; `partition`: `make_partition`'s triple;
    `augment`: the `AugmentOptions` of every stream (the weak augmentation)."""
    labeled, unlabeled, unlabeled_split = partition

    def stream(split, keep, batch_size, seed, input_context, drop_labels):
        return build_dataset(
            cfg.data_dir, split, training=True, batch_size=batch_size,
            crop_size=tuple(cfg.crop_size), normalization=None, seed=seed,
            deterministic=True, input_context=input_context, repeat=True,
            shuffle_buffer=cfg.shuffle_buffer, resample=resample, augment=augment,
            skip_corrupt=cfg.skip_corrupt, keep_filenames=keep, drop_labels=drop_labels)

    def fn(input_context, seed):
        parts = [stream(cfg.labeled_split, labeled, cfg.batch_size, seed, input_context,
                        False)]
        for i in range(1, streams + 1):
            parts.append(stream(unlabeled_split, unlabeled, unlabeled_batch_size(cfg),
                                seed + i * _STREAM_SEED_STEP, input_context, True))
        return tf.data.Dataset.zip(tuple(parts)).map(_as_dict)

    return fn


def _suffix(i):
    return "" if i == 1 else str(i)


def _as_dict(*parts):
    if isinstance(parts[0], dict):  # views, resampled in the step (`resolve_batch`)
        batch = {"views": parts[0]}
        for i, views in enumerate(parts[1:], 1):
            batch[f"u_views{_suffix(i)}"] = views
        return batch
    batch = {"image": parts[0][0], "label": parts[0][1]}
    for i, (image, zeros) in enumerate(parts[1:], 1):
        batch[f"u_image{_suffix(i)}"] = image
        batch[f"u_ignore{_suffix(i)}"] = tf.equal(zeros, IGNORE_LABEL)
    return batch


def resolve_batch(batch):
    """A zipped batch of views (``resample="device"``) -> the batch of images (module
    docstring); a batch of images is returned as it is."""
    if "views" not in batch:
        return batch
    out = {}
    out["image"], out["label"] = resample_views(batch["views"], None)
    for key in sorted(batch):
        if key.startswith("u_views"):
            image, zeros = resample_views(batch[key], None)
            tag = key[len("u_views"):]
            out[f"u_image{tag}"], out[f"u_ignore{tag}"] = image, tf.equal(zeros, IGNORE_LABEL)
    return out
