"""Dataset specifications: classes, palette, ignore label, raw-label mapping, splits, layout.

Inside the project every label map uses classes ``0..K-1`` and ignore ``255``. Each spec
carries a 256-entry lookup table ``raw -> train id`` (``-1`` marks a raw value that must not
occur) that the converters apply to the source files, and that the reader can apply on
the fly to records written by other tools (``build_dataset(..., raw_labels=True)``).

Built-in specs: ``voc2012``, ``pascal_context`` (59 classes, raw 0 ignored),
``pascal_context60``, ``cityscapes``, ``ade20k``, ``cocostuff164k``, ``cocostuff10k``,
``camvid``, ``shapes`` (synthetic) and ``generic`` (folder pairs + a class-list file, built
with ``get_dataset_spec("generic", class_list=PATH)``).
"""

import dataclasses
import os

import numpy as np

from iseg.registry import Registry

IGNORE_LABEL = 255

DATASETS = Registry("dataset")


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """Static description of one dataset.

    Attributes:
      name: registry name.
      num_classes: K; train ids are ``0..K-1``.
      class_names: K names.
      palette: K RGB tuples (for colour overlays).
      splits: split names the converter knows for this layout.
      layout: converter layout key (see ``iseg.datasets.layouts``).
      label_lut: 256 ints, raw source label value -> train id, 255 = ignore, -1 = invalid.
      ignore_label: always 255 inside the project.
      options: layout options (for example ``class_list`` of the generic dataset).
    """

    name: str
    num_classes: int
    class_names: tuple
    palette: tuple
    splits: tuple
    layout: str
    label_lut: tuple
    ignore_label: int = IGNORE_LABEL
    description: str = ""
    options: tuple = ()

    def __post_init__(self):
        if len(self.class_names) != self.num_classes:
            raise ValueError(
                f"dataset {self.name!r}: {len(self.class_names)} class names for "
                f"{self.num_classes} classes"
            )
        if len(self.palette) != self.num_classes:
            raise ValueError(f"dataset {self.name!r}: palette needs {self.num_classes} colours")
        if len(self.label_lut) != 256:
            raise ValueError(f"dataset {self.name!r}: label_lut needs 256 entries")

    @property
    def lut(self):
        """The raw -> train id table as an int16 numpy array of 256 entries."""
        return np.asarray(self.label_lut, np.int16)

    def option(self, key, default=None):
        return dict(self.options).get(key, default)

    def valid_raw_values(self):
        """Raw label values accepted by the mapping (for error messages)."""
        return [int(v) for v in np.nonzero(self.lut >= 0)[0]]

    def describe_raw_range(self):
        vals = self.valid_raw_values()
        ranges, start, prev = [], None, None
        for v in vals + [None]:
            if v is not None and prev is not None and v == prev + 1:
                prev = v
                continue
            if start is not None:
                ranges.append(f"{start}" if start == prev else f"{start}..{prev}")
            start = prev = v
        return ", ".join(ranges)

    def to_info(self):
        """The spec fields stored in ``dataset_info.json``."""
        return {
            "dataset": self.name,
            "num_classes": self.num_classes,
            "class_names": list(self.class_names),
            "palette": [list(c) for c in self.palette],
            "ignore_label": self.ignore_label,
        }


# ----------------------------------------------------------------------------- tables


def _lut(mapping, ignore_raw=(255,)):
    """256-entry table from {raw: train_id}; raw values in `ignore_raw` -> 255, rest -1."""
    table = [-1] * 256
    for raw in ignore_raw:
        table[raw] = IGNORE_LABEL
    for raw, train in mapping.items():
        table[raw] = train
    return tuple(table)


def identity_lut(num_classes):
    return _lut({i: i for i in range(num_classes)})


def reduce_zero_lut(num_classes):
    """Raw 0 is ignored and raw k (1..K) becomes k-1 (ADE20K, Pascal Context 59)."""
    return _lut({i + 1: i for i in range(num_classes)}, ignore_raw=(0, 255))


def voc_colormap(n):
    """The Pascal VOC bit-interleaved colour map (first `n` colours)."""
    colours = []
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        colours.append((r, g, b))
    return tuple(colours)


VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
    "sheep", "sofa", "train", "tvmonitor",
)

CONTEXT59_CLASSES = (
    "aeroplane", "bag", "bed", "bedclothes", "bench", "bicycle", "bird", "boat", "book",
    "bottle", "building", "bus", "cabinet", "car", "cat", "ceiling", "chair", "cloth",
    "computer", "cow", "cup", "curtain", "dog", "door", "fence", "floor", "flower", "food",
    "grass", "ground", "horse", "keyboard", "light", "motorbike", "mountain", "mouse",
    "person", "plate", "platform", "pottedplant", "road", "rock", "sheep", "shelves",
    "sidewalk", "sign", "sky", "snow", "sofa", "table", "track", "train", "tree", "truck",
    "tvmonitor", "wall", "water", "window", "wood",
)

# (labelId, trainId, name) for the 19 evaluated Cityscapes classes; other ids -> ignore.
CITYSCAPES_TRAIN = (
    (7, 0, "road"), (8, 1, "sidewalk"), (11, 2, "building"), (12, 3, "wall"),
    (13, 4, "fence"), (17, 5, "pole"), (19, 6, "traffic light"), (20, 7, "traffic sign"),
    (21, 8, "vegetation"), (22, 9, "terrain"), (23, 10, "sky"), (24, 11, "person"),
    (25, 12, "rider"), (26, 13, "car"), (27, 14, "truck"), (28, 15, "bus"),
    (31, 16, "train"), (32, 17, "motorcycle"), (33, 18, "bicycle"),
)
CITYSCAPES_PALETTE = (
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153),
    (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152),
    (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100),
    (0, 80, 100), (0, 0, 230), (119, 11, 32),
)

ADE20K_CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane",
    "grass", "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant",
    "curtain", "chair", "car", "water", "painting", "sofa", "shelf", "house", "sea",
    "mirror", "rug", "field", "armchair", "seat", "fence", "desk", "rock", "wardrobe",
    "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace",
    "refrigerator", "grandstand", "path", "stairs", "runway", "case", "pool table",
    "pillow", "screen door", "stairway", "river", "bridge", "bookcase", "blind",
    "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove",
    "palm", "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine",
    "hovel", "bus", "towel", "light", "truck", "tower", "chandelier", "awning",
    "streetlight", "booth", "television", "airplane", "dirt track", "apparel",
    "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet", "poster",
    "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything",
    "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag", "minibike",
    "cradle", "oven", "ball", "food", "step", "tank", "trade name", "microwave", "pot",
    "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture", "hood",
    "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen",
    "plate", "monitor", "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)

# COCO ids 1..182 that carry a class in COCO-Stuff (80 things + 91 stuff = 171).
COCO_THINGS = (
    (1, "person"), (2, "bicycle"), (3, "car"), (4, "motorcycle"), (5, "airplane"),
    (6, "bus"), (7, "train"), (8, "truck"), (9, "boat"), (10, "traffic light"),
    (11, "fire hydrant"), (13, "stop sign"), (14, "parking meter"), (15, "bench"),
    (16, "bird"), (17, "cat"), (18, "dog"), (19, "horse"), (20, "sheep"), (21, "cow"),
    (22, "elephant"), (23, "bear"), (24, "zebra"), (25, "giraffe"), (27, "backpack"),
    (28, "umbrella"), (31, "handbag"), (32, "tie"), (33, "suitcase"), (34, "frisbee"),
    (35, "skis"), (36, "snowboard"), (37, "sports ball"), (38, "kite"),
    (39, "baseball bat"), (40, "baseball glove"), (41, "skateboard"), (42, "surfboard"),
    (43, "tennis racket"), (44, "bottle"), (46, "wine glass"), (47, "cup"), (48, "fork"),
    (49, "knife"), (50, "spoon"), (51, "bowl"), (52, "banana"), (53, "apple"),
    (54, "sandwich"), (55, "orange"), (56, "broccoli"), (57, "carrot"), (58, "hot dog"),
    (59, "pizza"), (60, "donut"), (61, "cake"), (62, "chair"), (63, "couch"),
    (64, "potted plant"), (65, "bed"), (67, "dining table"), (70, "toilet"), (72, "tv"),
    (73, "laptop"), (74, "mouse"), (75, "remote"), (76, "keyboard"), (77, "cell phone"),
    (78, "microwave"), (79, "oven"), (80, "toaster"), (81, "sink"), (82, "refrigerator"),
    (84, "book"), (85, "clock"), (86, "vase"), (87, "scissors"), (88, "teddy bear"),
    (89, "hair drier"), (90, "toothbrush"),
)
COCO_STUFF_NAMES = (
    "banner", "blanket", "branch", "bridge", "building-other", "bush", "cabinet", "cage",
    "cardboard", "carpet", "ceiling-other", "ceiling-tile", "cloth", "clothes", "clouds",
    "counter", "cupboard", "curtain", "desk-stuff", "dirt", "door-stuff", "fence",
    "floor-marble", "floor-other", "floor-stone", "floor-tile", "floor-wood", "flower",
    "fog", "food-other", "fruit", "furniture-other", "grass", "gravel", "ground-other",
    "hill", "house", "leaves", "light", "mat", "metal", "mirror-stuff", "moss", "mountain",
    "mud", "napkin", "net", "paper", "pavement", "pillow", "plant-other", "plastic",
    "platform", "playingfield", "railing", "railroad", "river", "road", "rock", "roof",
    "rug", "salad", "sand", "sea", "shelf", "sky-other", "skyscraper", "snow",
    "solid-other", "stairs", "stone", "straw", "structural-other", "table", "tent",
    "textile-other", "towel", "tree", "vegetable", "wall-brick", "wall-concrete",
    "wall-other", "wall-panel", "wall-stone", "wall-tile", "wall-wood", "water-other",
    "waterdrops", "window-blind", "window-other", "wood",
)
# (COCO id, name) for the 171 COCO-Stuff classes, in train-id order.
COCO_STUFF_CLASSES = COCO_THINGS + tuple(
    (92 + i, name) for i, name in enumerate(COCO_STUFF_NAMES)
)

CAMVID_CLASSES = (
    "sky", "building", "pole", "road", "pavement", "tree", "signsymbol", "fence", "car",
    "pedestrian", "bicyclist",
)
CAMVID_PALETTE = (
    (128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222),
    (128, 128, 0), (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192),
)

SHAPES_CLASSES = ("background", "circle", "rectangle", "triangle", "ring")
SHAPES_PALETTE = ((0, 0, 0), (220, 50, 50), (50, 190, 70), (60, 80, 220), (230, 200, 40))


# ----------------------------------------------------------------------------- registry


@DATASETS.register("voc2012")
def _voc2012():
    return DatasetSpec(
        name="voc2012", num_classes=21, class_names=VOC_CLASSES, palette=voc_colormap(21),
        splits=("train", "val", "trainval", "train_aug"), layout="voc",
        label_lut=identity_lut(21),
        description="Pascal VOC 2012 (VOCdevkit/VOC2012); train_aug adds SBD labels",
    )


@DATASETS.register("pascal_context")
def _pascal_context():
    return DatasetSpec(
        name="pascal_context", num_classes=59, class_names=CONTEXT59_CLASSES,
        palette=voc_colormap(60)[1:], splits=("train", "val"), layout="pascal_context",
        label_lut=reduce_zero_lut(59),
        description="Pascal Context, 59 classes; raw 0 (background) is ignored",
    )


@DATASETS.register("pascal_context60")
def _pascal_context60():
    return DatasetSpec(
        name="pascal_context60", num_classes=60,
        class_names=("background",) + CONTEXT59_CLASSES, palette=voc_colormap(60),
        splits=("train", "val"), layout="pascal_context", label_lut=identity_lut(60),
        description="Pascal Context, 60 classes (background is a class)",
    )


@DATASETS.register("cityscapes")
def _cityscapes(label_files="labelIds"):
    """`label_files`: "labelIds" (default, mapped to trainIds) or "labelTrainIds" (read
    the ``*_gtFine_labelTrainIds.png`` files made by cityscapesscripts as they are)."""
    if label_files == "labelIds":
        mapping = {raw: 255 for raw in range(34)}
        mapping.update({raw: train for raw, train, _ in CITYSCAPES_TRAIN})
        lut = _lut(mapping)
    elif label_files == "labelTrainIds":
        lut = identity_lut(19)
    else:
        raise ValueError(
            f"cityscapes label_files must be 'labelIds' or 'labelTrainIds', got {label_files!r}"
        )
    return DatasetSpec(
        name="cityscapes", num_classes=19,
        class_names=tuple(n for _, _, n in CITYSCAPES_TRAIN), palette=CITYSCAPES_PALETTE,
        splits=("train", "val"), layout="cityscapes", label_lut=lut,
        description=f"Cityscapes fine (leftImg8bit / gtFine {label_files} -> trainIds)",
        options=(("label_files", label_files),),
    )


@DATASETS.register("ade20k")
def _ade20k():
    return DatasetSpec(
        name="ade20k", num_classes=150, class_names=ADE20K_CLASSES,
        palette=voc_colormap(151)[1:], splits=("train", "val"), layout="ade20k",
        label_lut=reduce_zero_lut(150),
        description="ADE20K SceneParsing (ADEChallengeData2016), reduce-zero-label",
    )


def _cocostuff_lut(offset):
    """COCO id k is stored as raw k - offset; unused ids are ignored."""
    mapping = {}
    for raw in range(256):
        coco_id = raw + offset
        if 0 < coco_id <= 182:
            mapping[raw] = 255
    for train, (coco_id, _) in enumerate(COCO_STUFF_CLASSES):
        mapping[coco_id - offset] = train
    ignore = (255,) if offset == 1 else (0, 255)
    return _lut(mapping, ignore_raw=ignore)


@DATASETS.register("cocostuff164k")
def _cocostuff164k():
    return DatasetSpec(
        name="cocostuff164k", num_classes=171,
        class_names=tuple(n for _, n in COCO_STUFF_CLASSES), palette=voc_colormap(172)[1:],
        splits=("train", "val"), layout="cocostuff164k", label_lut=_cocostuff_lut(1),
        description="COCO-Stuff 164k stuffthingmaps (raw = COCO id - 1, 255 unlabeled)",
    )


@DATASETS.register("cocostuff10k")
def _cocostuff10k():
    return DatasetSpec(
        name="cocostuff10k", num_classes=171,
        class_names=tuple(n for _, n in COCO_STUFF_CLASSES), palette=voc_colormap(172)[1:],
        splits=("train", "val"), layout="cocostuff10k", label_lut=_cocostuff_lut(0),
        description="COCO-Stuff 10k (raw = COCO id, 0 unlabeled); val = imageLists/test.txt",
    )


@DATASETS.register("camvid")
def _camvid():
    return DatasetSpec(
        name="camvid", num_classes=11, class_names=CAMVID_CLASSES, palette=CAMVID_PALETTE,
        splits=("train", "val", "test"), layout="camvid",
        label_lut=_lut({i: i for i in range(11)}, ignore_raw=(11, 255)),
        description="CamVid, SegNet layout (train/, trainannot/, ...), raw 11 = void",
    )


@DATASETS.register("shapes")
def _shapes():
    return DatasetSpec(
        name="shapes", num_classes=len(SHAPES_CLASSES), class_names=SHAPES_CLASSES,
        palette=SHAPES_PALETTE, splits=("train", "val"), layout="generic",
        label_lut=identity_lut(len(SHAPES_CLASSES)),
        description="Synthetic coloured shapes on textured backgrounds",
    )


def read_class_list(path):
    """Parse a class-list file: one class per line, ``name`` or ``name R G B``.

    Blank lines and lines starting with ``#`` are skipped. Line order gives the train id.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"class-list file not found: {path}")
    names, colours = [], []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.split()
            colour = None
            if len(parts) >= 4 and all(p.isdigit() for p in parts[-3:]):
                colour = tuple(int(p) for p in parts[-3:])
                if max(colour) > 255:
                    raise ValueError(f"{path}:{lineno}: colour {colour} is outside 0..255")
                parts = parts[:-3]
            names.append(" ".join(parts))
            colours.append(colour)
    if not names:
        raise ValueError(f"class-list file {path} lists no classes")
    if len(names) > 255:
        raise ValueError(f"class-list file {path} lists {len(names)} classes; at most 255")
    default = voc_colormap(len(names))
    palette = tuple(c if c is not None else default[i] for i, c in enumerate(colours))
    return tuple(names), palette


@DATASETS.register("generic")
def _generic(class_list=None, name="generic"):
    if class_list is None:
        raise ValueError(
            "dataset 'generic' needs a class-list file: get_dataset_spec('generic', "
            "class_list=PATH) or --class_list=PATH"
        )
    names, palette = read_class_list(class_list)
    return DatasetSpec(
        name=name, num_classes=len(names), class_names=names, palette=palette,
        splits=("train", "val", "test"), layout="generic",
        label_lut=identity_lut(len(names)),
        description=f"folder pairs images/<split>/*, labels/<split>/*.png; classes {class_list}",
        options=(("class_list", os.path.abspath(class_list)),),
    )


def get_dataset_spec(name, **options):
    """The `DatasetSpec` registered as `name` (ValueError listing valid names if unknown).

    Keyword options go to the builder (``class_list=`` for ``generic``).
    """
    if isinstance(name, DatasetSpec):
        return name
    return DATASETS.get(name)(**options)
