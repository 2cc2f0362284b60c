"""Training and evaluation batches for `model.fit` on any Keras backend, read from the
converted TFRecord shards without TensorFlow (`iseg.datasets.records`, PIL, NumPy).

Training: batch ``b`` of a run is a pure function of (seed, b): epoch ``e = b // n``
(``n`` = examples // batch size, the remainder dropped) takes its examples in the order of
a permutation drawn from ``(seed, e)``, and each example's view (`np_augment.augment`) is
drawn from ``(seed, e, example index)``. `TrainBatches` is a `keras.utils.PyDataset` of
the batches ``start .. start + steps - 1``, so a resumed run continues the sequence at its
step. Evaluation (`eval_batches`) yields the images of a split in file order, normalised
and padded as the tf.data evaluation batches are.
"""

import io

import keras
import numpy as np
from PIL import Image, UnidentifiedImageError

from iseg.datasets import info as info_lib
from iseg.datasets import np_augment, records
from iseg.datasets.specs import IGNORE_LABEL
from iseg.errors import DataError, EmptyDatasetError

IMAGE_KEY = "image/encoded"
LABEL_KEY = "image/segmentation/class/encoded"


def _decode(data, where, what):
    try:
        with Image.open(io.BytesIO(data)) as im:
            if what == "image":
                return np.asarray(im.convert("RGB"))
            return np.asarray(im if im.mode in ("L", "P") else im.convert("L"))
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise DataError(f"cannot decode the {what} of {where}: {e}") from None


class RecordSource:
    """The records of one split of a converted dataset folder, by index:
    ``example(i)`` -> (image uint8 [H, W, 3], label uint8 [H, W], filename)."""

    def __init__(self, data_dir, split, num_classes=None, verify="header"):
        info = info_lib.load_dataset_info(data_dir)
        compression = info.get("compression", "NONE")
        self.num_classes = int(num_classes or info["num_classes"])
        self.files = [records.RecordFile(path, compression, verify)
                      for path in info_lib.list_shards(data_dir, split)]
        self._index = [(k, j) for k, rf in enumerate(self.files) for j in range(len(rf))]
        if not self._index:
            raise EmptyDatasetError(f"split {split!r} in {data_dir} holds no records")

    def __len__(self):
        return len(self._index)

    def example(self, i):
        k, j = self._index[i]
        path = self.files[k].path
        where = f"{path}, record {j}"
        try:
            features = records.parse_example(self.files[k][j])
        except ValueError as e:
            raise DataError(f"record {j} of {path} is not a tf.train.Example: {e}") from None
        if IMAGE_KEY not in features or LABEL_KEY not in features:
            raise DataError(
                f"{where} has no {IMAGE_KEY!r} / {LABEL_KEY!r} (keys: "
                f"{', '.join(sorted(features))}): without TensorFlow only records with the "
                "TF DeepLab / Model Garden keys (what python -m iseg.cli.convert writes) "
                "are read")
        name = (features.get("image/filename") or [b""])[0].decode("utf-8", "replace")
        image = _decode(features[IMAGE_KEY][0], where, "image")
        label = _decode(features[LABEL_KEY][0], where, "label")
        if image.shape[:2] != label.shape:
            raise DataError(f"{where} ({name}): image {image.shape[:2]} and label "
                            f"{label.shape} differ in size")
        bad = (label >= self.num_classes) & (label != IGNORE_LABEL)
        if bad.any():
            raise DataError(
                f"label value outside [0, {self.num_classes}) that is not the ignore label "
                f"{IGNORE_LABEL} in record {name} ({where}): values "
                f"{sorted(int(v) for v in np.unique(label[bad]))}")
        return image, label, name


class TrainBatches(keras.utils.PyDataset):
    """Training batches ``start .. start + steps - 1`` of the seeded sequence (see the
    module docstring): ``(images float32 [B, ch, cw, 3], labels int32 [B, ch, cw])``."""

    def __init__(self, source, *, batch_size, crop_size, seed, steps, start=0,
                 options=np_augment.AugmentOptions(),
                 normalization=np_augment.DEFAULT_NORMALIZATION, workers=1):
        super().__init__(workers=workers, use_multiprocessing=False)
        if len(source) < batch_size:
            raise EmptyDatasetError(f"the training split has {len(source)} examples, fewer "
                                    f"than one batch of {batch_size}")
        self.source, self.batch_size = source, int(batch_size)
        self.crop_size = tuple(int(c) for c in crop_size)
        self.seed, self.steps, self.start = int(seed), int(steps), int(start)
        self.options, self.normalization = options, normalization
        self.per_epoch = len(source) // self.batch_size

    def __len__(self):
        return self.steps

    def examples(self, batch):
        """(epoch, example indices) of batch number `batch` of the sequence."""
        epoch, k = divmod(int(batch), self.per_epoch)
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.source))
        return epoch, order[k * self.batch_size:(k + 1) * self.batch_size]

    def uniforms(self, epoch, index):
        """The ten uniforms of the view of example `index` in `epoch`."""
        return np.random.default_rng([self.seed, epoch, int(index)]).random(10, np.float32)

    def __getitem__(self, i):
        if not 0 <= i < self.steps:
            raise IndexError(f"batch {i} of {self.steps}")
        epoch, indices = self.examples(self.start + i)
        views = [np_augment.augment(*self.source.example(j)[:2], self.uniforms(epoch, j),
                                    self.crop_size, self.options, self.normalization)
                 for j in indices]
        return (np.stack([v[0] for v in views]), np.stack([v[1] for v in views]))


def eval_batches(source, batch_size, crop_size=None,
                 normalization=np_augment.DEFAULT_NORMALIZATION, max_batches=None):
    """Yield ``(images, labels, sizes, names)`` over `source` in file order: images
    float32 ``[B, H, W, 3]`` normalised, each padded bottom/right to `crop_size` where
    smaller (0, the mean pixel) and to the largest in the batch; labels int32 padded with
    255; sizes the original (height, width) of each image."""
    n = len(source)
    if max_batches is not None:
        n = min(n, max_batches * batch_size)
    for first in range(0, n, batch_size):
        items = [source.example(i) for i in range(first, min(first + batch_size, n))]
        sizes = [item[1].shape for item in items]
        th = max(max(h for h, _ in sizes), crop_size[0] if crop_size else 0)
        tw = max(max(w for _, w in sizes), crop_size[1] if crop_size else 0)
        images = np.zeros((len(items), th, tw, 3), np.float32)
        labels = np.full((len(items), th, tw), IGNORE_LABEL, np.int32)
        for b, (image, label, _) in enumerate(items):
            h, w = label.shape
            images[b, :h, :w] = np_augment.normalize(image, normalization)
            labels[b, :h, :w] = label
        yield images, labels, sizes, [item[2] for item in items]
