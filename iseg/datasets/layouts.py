"""On-disk layouts of the public datasets: list (image, label) pairs per split.

Each layout function takes ``(spec, data_dir, split)`` and returns a list of `Pair`.
`data_dir` may point at the dataset root or at the folder that contains it (for example
``VOCdevkit`` or its parent for VOC). Layouts:

- ``voc``: ``VOC2012/JPEGImages/*.jpg``, ``SegmentationClass/*.png``,
  ``ImageSets/Segmentation/{train,val,trainval}.txt``. ``train_aug``: the list
  ``ImageSets/Segmentation/train_aug.txt`` (or ``trainaug.txt``) with labels from
  ``SegmentationClassAug/`` (falling back to ``SegmentationClass/``); or, with the layout
  option ``sbd_dir`` (SBD ``benchmark_RELEASE/dataset``: ``cls/*.mat``, ``train.txt``,
  ``val.txt``), (SBD train + SBD val + VOC train) minus VOC val, VOC labels first.
- ``pascal_context``: ``VOC2010/JPEGImages``, ``VOC2010/SegmentationClassContext/*.png``,
  ``VOC2010/ImageSets/SegmentationContext/{train,val}.txt`` (raw 0 = background).
- ``cityscapes``: ``leftImg8bit/{split}/*/*_leftImg8bit.png`` with
  ``gtFine/{split}/*/*_gtFine_labelIds.png`` (or ``*_gtFine_labelTrainIds.png`` with the
  spec option ``label_files="labelTrainIds"``).
- ``ade20k``: ``ADEChallengeData2016/images/{training,validation}/*.jpg`` with
  ``annotations/.../*.png``.
- ``cocostuff164k``: ``images/{train2017,val2017}/*.jpg`` with
  ``annotations/{train2017,val2017}/*.png`` (stuffthingmaps: raw = COCO id - 1).
- ``cocostuff10k``: ``images/*.jpg``, ``annotations/*.mat`` (key ``S``) or ``*.png``,
  ``imageLists/{train,test}.txt`` (split ``val`` reads ``test.txt``).
- ``camvid``: ``{split}/*`` with ``{split}annot/*.png`` (SegNet layout), paired by name.
- ``generic``: ``images/{split}/*`` with ``labels/{split}/*.png``, paired by file stem.
"""

import collections
import glob
import os

import numpy as np
from PIL import Image

Pair = collections.namedtuple("Pair", ["image", "label", "key"])

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


class ConversionError(ValueError):
    """Bad input found while converting; the message names the file and the value."""


def _find_root(data_dir, marker, candidates):
    """The first of data_dir/<c> (c in candidates, "" first) that contains `marker`."""
    for c in ("",) + tuple(candidates):
        root = os.path.join(data_dir, c) if c else data_dir
        if os.path.exists(os.path.join(root, marker)):
            return root
    raise FileNotFoundError(
        f"{data_dir} does not look like this dataset: no {marker} in it or in "
        + ", ".join(os.path.join(data_dir, c) for c in candidates)
    )


def _read_list(path):
    if not os.path.isfile(path):
        raise FileNotFoundError(f"split file not found: {path}")
    with open(path, encoding="utf-8") as f:
        return [line.split()[0] for line in f if line.strip()]


def _check_exists(pairs, split_file):
    for p in pairs:
        for path in (p.image, p.label):
            if not os.path.isfile(path):
                where = f" (listed in {split_file})" if split_file else ""
                raise ConversionError(f"missing file {path} for example {p.key!r}{where}")
    return pairs


def _pairs_by_stem(image_dir, label_dir, label_suffix=".png", label_stem=lambda s: s):
    if not os.path.isdir(image_dir):
        raise FileNotFoundError(f"image folder not found: {image_dir}")
    if not os.path.isdir(label_dir):
        raise FileNotFoundError(f"label folder not found: {label_dir}")
    pairs = []
    for name in sorted(os.listdir(image_dir)):
        stem, ext = os.path.splitext(name)
        if ext.lower() not in IMAGE_EXTS:
            continue
        label = os.path.join(label_dir, label_stem(stem) + label_suffix)
        if not os.path.isfile(label):
            raise ConversionError(
                f"image {os.path.join(image_dir, name)} has no label: {label} is missing"
            )
        pairs.append(Pair(os.path.join(image_dir, name), label, stem))
    if not pairs:
        raise FileNotFoundError(f"no images in {image_dir}")
    return pairs


def _split_of(spec, split):
    if split not in spec.splits:
        raise ValueError(
            f"dataset {spec.name!r} has no split {split!r}; valid: {', '.join(spec.splits)}"
        )


# ----------------------------------------------------------------------------- layouts


def voc(spec, data_dir, split):
    root = _find_root(data_dir, "JPEGImages", ("VOC2012", "VOCdevkit/VOC2012"))
    sets = os.path.join(root, "ImageSets", "Segmentation")
    img = lambda i: os.path.join(root, "JPEGImages", i + ".jpg")  # noqa: E731
    if split != "train_aug":
        split_file = os.path.join(sets, split + ".txt")
        ids = _read_list(split_file)
        pairs = [Pair(img(i), os.path.join(root, "SegmentationClass", i + ".png"), i)
                 for i in ids]
        return _check_exists(pairs, split_file)
    for name in ("train_aug.txt", "trainaug.txt"):
        split_file = os.path.join(sets, name)
        if os.path.isfile(split_file):
            pairs = []
            for i in _read_list(split_file):
                label = os.path.join(root, "SegmentationClassAug", i + ".png")
                if not os.path.isfile(label):
                    label = os.path.join(root, "SegmentationClass", i + ".png")
                pairs.append(Pair(img(i), label, i))
            return _check_exists(pairs, split_file)
    sbd = spec.option("sbd_dir")
    if not sbd:
        raise FileNotFoundError(
            f"split train_aug needs {os.path.join(sets, 'train_aug.txt')} (with "
            "SegmentationClassAug/) or the SBD folder (--sbd_dir=.../benchmark_RELEASE/dataset)"
        )
    voc_train = _read_list(os.path.join(sets, "train.txt"))
    voc_val = set(_read_list(os.path.join(sets, "val.txt")))
    sbd_ids = _read_list(os.path.join(sbd, "train.txt")) + _read_list(os.path.join(sbd, "val.txt"))
    voc_set = set(voc_train)
    pairs, seen = [], set()
    for i in voc_train + sbd_ids:
        if i in seen or i in voc_val:
            continue
        seen.add(i)
        if i in voc_set:
            label = os.path.join(root, "SegmentationClass", i + ".png")
        else:
            label = os.path.join(sbd, "cls", i + ".mat")
        pairs.append(Pair(img(i), label, i))
    return _check_exists(pairs, os.path.join(sbd, "train.txt"))


def pascal_context(spec, data_dir, split):
    root = _find_root(data_dir, "SegmentationClassContext", ("VOC2010", "VOCdevkit/VOC2010"))
    split_file = os.path.join(root, "ImageSets", "SegmentationContext", split + ".txt")
    pairs = [
        Pair(os.path.join(root, "JPEGImages", i + ".jpg"),
             os.path.join(root, "SegmentationClassContext", i + ".png"), i)
        for i in _read_list(split_file)
    ]
    return _check_exists(pairs, split_file)


def cityscapes(spec, data_dir, split):
    root = _find_root(data_dir, "leftImg8bit", ("cityscapes",))
    image_dir = os.path.join(root, "leftImg8bit", split)
    if not os.path.isdir(image_dir):
        raise FileNotFoundError(f"image folder not found: {image_dir}")
    pairs = []
    for path in sorted(glob.glob(os.path.join(image_dir, "*", "*_leftImg8bit.png"))):
        city = os.path.basename(os.path.dirname(path))
        stem = os.path.basename(path)[: -len("_leftImg8bit.png")]
        suffix = f"_gtFine_{spec.option('label_files', 'labelIds')}.png"
        label = os.path.join(root, "gtFine", split, city, stem + suffix)
        pairs.append(Pair(path, label, stem))
    if not pairs:
        raise FileNotFoundError(f"no *_leftImg8bit.png files under {image_dir}")
    return _check_exists(pairs, None)


def ade20k(spec, data_dir, split):
    root = _find_root(data_dir, "annotations", ("ADEChallengeData2016",))
    sub = {"train": "training", "val": "validation"}[split]
    return _pairs_by_stem(os.path.join(root, "images", sub), os.path.join(root, "annotations", sub))


def cocostuff164k(spec, data_dir, split):
    root = _find_root(data_dir, "annotations", ("coco_stuff164k", "cocostuff164k"))
    sub = {"train": "train2017", "val": "val2017"}[split]
    return _pairs_by_stem(os.path.join(root, "images", sub), os.path.join(root, "annotations", sub))


def cocostuff10k(spec, data_dir, split):
    root = _find_root(data_dir, "imageLists", ("coco_stuff10k", "cocostuff-10k-v1.1"))
    split_file = os.path.join(root, "imageLists", {"train": "train", "val": "test"}[split] + ".txt")
    pairs = []
    for i in _read_list(split_file):
        label = os.path.join(root, "annotations", i + ".mat")
        if not os.path.isfile(label):
            label = os.path.join(root, "annotations", i + ".png")
        pairs.append(Pair(os.path.join(root, "images", i + ".jpg"), label, i))
    return _check_exists(pairs, split_file)


def camvid(spec, data_dir, split):
    root = _find_root(data_dir, split + "annot", ("CamVid", "camvid"))
    return _pairs_by_stem(os.path.join(root, split), os.path.join(root, split + "annot"))


def generic(spec, data_dir, split):
    return _pairs_by_stem(
        os.path.join(data_dir, "images", split), os.path.join(data_dir, "labels", split)
    )


LAYOUTS = {
    "voc": voc,
    "pascal_context": pascal_context,
    "cityscapes": cityscapes,
    "ade20k": ade20k,
    "cocostuff164k": cocostuff164k,
    "cocostuff10k": cocostuff10k,
    "camvid": camvid,
    "generic": generic,
}


def list_pairs(spec, data_dir, split):
    """(image, label, key) pairs of `split` in the dataset's own layout under `data_dir`."""
    _split_of(spec, split)
    return LAYOUTS[spec.layout](spec, data_dir, split)


# ----------------------------------------------------------------------------- decoding


def read_raw_label(path):
    """The raw label map of a source file as a 2-D integer numpy array.

    PNG (grey or palette: the palette index is the label), or MATLAB ``.mat`` files (SBD
    ``GTcls.Segmentation``, COCO-Stuff 10k ``S``; needs scipy).
    """
    if path.endswith(".mat"):
        try:
            import scipy.io  # pylint: disable=import-outside-toplevel
        except ImportError:
            raise ConversionError(f"reading {path} needs scipy (pip install scipy)") from None
        try:
            mat = scipy.io.loadmat(path)
        except (OSError, ValueError) as e:
            raise ConversionError(f"unreadable label file {path}: {e}") from None
        if "S" in mat:
            return np.asarray(mat["S"])
        if "GTcls" in mat:
            return np.asarray(mat["GTcls"][0]["Segmentation"][0])
        raise ConversionError(f"label file {path} has neither 'S' nor 'GTcls'")
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode not in ("L", "P", "I", "I;16", "1"):
                raise ConversionError(
                    f"label file {path} has mode {im.mode}: expected a single-channel "
                    "(grey or palette) PNG of class indices"
                )
            return np.asarray(im)
    except (OSError, SyntaxError) as e:
        raise ConversionError(f"unreadable label file {path}: {e}") from None
