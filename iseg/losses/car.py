"""CAR: class-aware regularization losses (METHODS.md 2(c)), keras.ops only.

Entry points:

- `car_losses(features, labels, num_classes, ignore_label=255, **options)`: the three CAR
  terms for features `[N, H, W, C]` and integer labels `[N, H, W]` at the feature size.
- `car_multi_rate_losses(z, labels, num_classes, pooling_rates, ignore_label, ...)`: what a
  model calls on the CAR block's projection `z`: for each pooling rate `r` it average-pools
  `z` (r x r, stride r, SAME), nearest-resizes the labels (input or feature size) to the
  pooled size with `iseg.ops.resize_labels`, and sums the terms over the rates.
- `CARLoss`: a small stateful Keras layer around `car_multi_rate_losses`; needed only for
  the EMA ("last class centre") option, whose centres live in a non-trainable variable.

All three return a dict `{"intra", "inter_c2c", "inter_c2p"}` of float32 scalars, each
already multiplied by its rate (`intra_loss_rate`, `inter_loss_rate`; a disabled term is a
constant 0), so the CAR loss is the sum of the values.

Implementation: class sums and pixel counts are `keras.ops.segment_sum` over the flattened
pixels (ignored pixels and labels outside `[0, K)` go to a dump segment `K` that is
dropped), never a `[pixels x classes]` one-hot matmul. The sums are summed across replicas
with `iseg.distribute.cross_replica_sum` (in a TensorFlow distribution strategy's replica
context; identity elsewhere) and divided with divide-no-nan. The only `[pixels x K]`
tensors are those of the centre-to-pixel term, which has the size of the logits.
Everything is computed in float32.

Distribution: centres are global; every mean is over the replica's local batch (as the
original). Because the intra and c2p terms are *squares* of means, the average of the
per-replica terms is not the single-device term on the full batch; with equal local batches
the average of their square roots is.

Differences from the original, on purpose: a label outside `[0, K)` that is not the ignore
label is treated as ignored (the original used a zero centre for it in the intra term);
`remove_max` drops the per-(image, channel) maximum as `sum - max` (the original sorts; equal
unless the maximum is tied, where only the gradient split differs).
"""

import dataclasses
import math

import keras
from keras import ops

from iseg.distribute import cross_replica_sum
from iseg.ops import resize_labels, spatial_shape

EPSILON = 1e-7  # Keras' backend epsilon, the clip of the inter-class terms
INTRA_FLOOR = 1e-5


def _check_num_classes(num_classes):
    if int(num_classes) < 2:
        raise ValueError(f"CAR needs num_classes >= 2, got {num_classes}")


def _flatten(features, labels, num_classes, ignore_label):
    """float32 `[N*P, C]` features, int32 labels, validity mask and segment ids."""
    if len(features.shape) != 4 or len(labels.shape) != 3:
        raise ValueError(
            "CAR losses expect features [N, H, W, C] and labels [N, H, W]; got features of "
            f"shape {tuple(features.shape)} and labels of shape {tuple(labels.shape)}"
        )
    channels = features.shape[-1]
    f = ops.reshape(ops.cast(features, "float32"), (-1, channels))
    y = ops.reshape(ops.cast(labels, "int32"), (-1,))
    valid = ops.logical_and(
        ops.not_equal(y, ignore_label), ops.logical_and(y >= 0, y < num_classes)
    )
    segments = ops.where(valid, y, num_classes)
    return f, y, valid, segments


def class_centers(f, segments, num_classes):
    """Global class centres `mu [K, C]` and pixel counts `[K]` from flattened features.

    Sums and counts are segment sums (segment K collects ignored pixels and is dropped),
    all-reduced across replicas in one call, then divided with divide-no-nan (absent
    classes get the zero vector). Gradients flow through `mu`.
    """
    sums = ops.segment_sum(f, segments, num_segments=num_classes + 1)[:num_classes]
    counts = ops.segment_sum(
        ops.ones_like(segments, dtype="float32"), segments, num_segments=num_classes + 1
    )[:num_classes]
    packed = cross_replica_sum(ops.concatenate([sums, counts[:, None]], axis=-1))
    sums, counts = packed[:, :-1], packed[:, -1]
    return ops.divide_no_nan(sums, counts[:, None]), counts


def intra_class_loss(f, centers, y, valid, num_images, remove_max=False):
    """`max((mean |f - sg(mu_y)|)^2, 1e-5)`, ignored pixels contributing 0 to the mean."""
    mu = ops.stop_gradient(centers)
    own = ops.take(mu, ops.where(valid, y, 0), axis=0)  # [N*P, C] gather, not a matmul
    diff = ops.abs(f - own) * ops.cast(valid, "float32")[:, None]
    if remove_max:
        channels = f.shape[-1]
        diff = ops.reshape(diff, (num_images, -1, channels))
        pixels = ops.shape(diff)[1]
        total = ops.sum(diff) - ops.sum(ops.max(diff, axis=1))
        count = ops.cast(num_images * channels * (pixels - 1), "float32")
        mean = total / count
    else:
        mean = ops.mean(diff)
    return ops.maximum(ops.square(mean), INTRA_FLOOR)


def _thresholded_excess(relation, threshold):
    return ops.where(relation > threshold, relation - threshold, ops.zeros_like(relation))


def inter_c2c_loss(centers, threshold=0.5):
    """Centre-to-centre: softmax(mu sg(mu)^T / sqrt(C)) off the diagonal above 0.5/(K-1)."""
    num_classes, channels = centers.shape
    logits = ops.matmul(centers, ops.transpose(ops.stop_gradient(centers)))
    relation = ops.softmax(logits / math.sqrt(channels), axis=-1)
    relation = relation * (1.0 - ops.eye(num_classes, dtype="float32"))
    excess = _thresholded_excess(relation, threshold / (num_classes - 1))
    per_class = ops.clip(ops.sum(excess, axis=-1), EPSILON, 1.0 - EPSILON)
    return ops.square(ops.mean(per_class))


def inter_c2p_loss(f, centers, y, valid, threshold=0.25, mask_ignored=False):
    """Centre-to-pixel: softmax over classes of `f . sg(mu_k)` (own class: `|sg(mu_y)|^2`).

    Ignored pixels have no own class, so every class counts as "other" for them (the
    original); `mask_ignored=True` drops them from the mean instead.
    """
    num_classes, channels = centers.shape
    mu = ops.stop_gradient(centers)
    energy = ops.matmul(f, ops.transpose(mu))  # [N*P, K]: the logits-sized tensor
    own = ops.equal(y[:, None], ops.arange(num_classes, dtype="int32")[None, :])
    own = ops.logical_and(own, valid[:, None])
    self_energy = ops.sum(ops.square(mu), axis=-1)[None, :]
    energy = ops.where(own, self_energy, energy)
    relation = ops.softmax(energy / math.sqrt(channels), axis=-1)
    relation = ops.where(own, ops.zeros_like(relation), relation)
    excess = _thresholded_excess(relation, threshold / (num_classes - 1))
    per_pixel = ops.clip(ops.sum(excess, axis=-1), EPSILON, 1.0 - EPSILON)
    if mask_ignored:
        weights = ops.cast(valid, "float32")
        mean = ops.divide_no_nan(ops.sum(per_pixel * weights), ops.sum(weights))
    else:
        mean = ops.mean(per_pixel)
    return ops.square(mean)


def _car_terms(
    features,
    labels,
    num_classes,
    ignore_label=255,
    use_intra=True,
    use_inter_c2c=True,
    use_inter_c2p=True,
    intra_loss_rate=1.0,
    inter_loss_rate=1.0,
    inter_c2c_threshold=0.5,
    inter_c2p_threshold=0.25,
    remove_max=False,
    mask_ignored_c2p=False,
    ema_centers=None,
    ema_decay=0.9,
):
    """The loss dict and the centres the losses used (the EMA update when given)."""
    _check_num_classes(num_classes)
    f, y, valid, segments = _flatten(features, labels, num_classes, ignore_label)
    centers, counts = class_centers(f, segments, num_classes)
    if ema_centers is not None:
        # The original "last class centre": move present classes by (1 - decay) towards
        # the batch centres; the losses then read the (non-trainable) buffer.
        present = ops.cast(counts > 0, "float32")[:, None]
        previous = ops.cast(ema_centers, "float32")
        centers = ops.stop_gradient(previous + (1.0 - ema_decay) * present * (centers - previous))
    zero = ops.zeros((), dtype="float32")
    losses = {"intra": zero, "inter_c2c": zero, "inter_c2p": zero}
    if use_intra:
        losses["intra"] = intra_loss_rate * intra_class_loss(
            f, centers, y, valid, features.shape[0] or ops.shape(features)[0], remove_max
        )
    if use_inter_c2c:
        losses["inter_c2c"] = inter_loss_rate * inter_c2c_loss(centers, inter_c2c_threshold)
    if use_inter_c2p:
        losses["inter_c2p"] = inter_loss_rate * inter_c2p_loss(
            f, centers, y, valid, inter_c2p_threshold, mask_ignored_c2p
        )
    return losses, centers


def car_losses(features, labels, num_classes, ignore_label=255, **options):
    """The CAR terms for `features [N, H, W, C]` and int `labels [N, H, W]` (same H, W).

    Options: `use_intra`, `use_inter_c2c`, `use_inter_c2p` (all True: the published
    setting), `intra_loss_rate`, `inter_loss_rate` (1.0), `inter_c2c_threshold` (0.5),
    `inter_c2p_threshold` (0.25), `remove_max` (False), `mask_ignored_c2p` (False: ignored
    pixels take part in c2p as in the original), `ema_centers` (a `[K, C]` tensor of EMA
    centres, see `CARLoss`) and `ema_decay` (0.9).
    """
    return _car_terms(features, labels, num_classes, ignore_label, **options)[0]


def pool_features(z, rate):
    """`z` in float32, average-pooled r x r with stride r and SAME padding when r > 1."""
    z = ops.cast(z, "float32")
    if rate == 1:
        return z
    return ops.average_pool(z, pool_size=rate, strides=rate, padding="same")


def _check_rates(pooling_rates):
    rates = tuple(int(r) for r in pooling_rates)
    if not rates or any(r < 1 for r in rates):
        raise ValueError(f"CAR pooling_rates must be positive integers, got {pooling_rates!r}")
    return rates


@dataclasses.dataclass(frozen=True)
class CAROptions:
    """Every setting of CAR, in one object: given once to `SegmentationModel(car=...)`,
    which resolves the head-dependent defaults and hands the same object to the head (its
    CAR block) and to `CARLoss`.

    Head side: `filters` (block width F; None: the head's `car_filters`), `pooling_rates`
    (None: the head's `car_pooling_rates`), `apply_end_conv`. Loss side: the options of
    `car_losses` and the EMA centres of `CARLoss`.
    """

    filters: int = None
    pooling_rates: tuple = None
    apply_end_conv: bool = True
    use_intra: bool = True
    use_inter_c2c: bool = True
    use_inter_c2p: bool = True
    intra_loss_rate: float = 1.0
    inter_loss_rate: float = 1.0
    inter_c2c_threshold: float = 0.5
    inter_c2p_threshold: float = 0.25
    remove_max: bool = False
    mask_ignored_c2p: bool = False
    use_ema_centers: bool = False
    ema_decay: float = 0.9
    shared_ema_centers: bool = False

    def __post_init__(self):
        if self.pooling_rates is not None:
            object.__setattr__(self, "pooling_rates", _check_rates(self.pooling_rates))

    @classmethod
    def create(cls, value):
        """None (no CAR), a `CAROptions`, or a dict of its fields (unknown keys: an error
        listing the valid ones)."""
        if value is None or isinstance(value, cls):
            return value
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(value) - set(names))
        if unknown:
            raise ValueError(
                f"Unknown CAR option(s) {', '.join(unknown)}. Valid CAR options: "
                f"{', '.join(names)}"
            )
        return cls(**value)

    def for_head(self, head):
        """These options with the head's defaults (class or instance attributes
        `car_filters`, `car_pooling_rates`) filled in."""
        return dataclasses.replace(
            self,
            filters=self.filters or head.car_filters,
            pooling_rates=self.pooling_rates or head.car_pooling_rates,
        )

    def loss_options(self):
        """Keyword options of `CARLoss` (everything but the block's)."""
        options = self.to_dict()
        for key in ("filters", "apply_end_conv"):
            options.pop(key)
        return options

    def to_dict(self):
        options = dataclasses.asdict(self)
        if options["pooling_rates"] is not None:
            options["pooling_rates"] = list(options["pooling_rates"])
        return options


def car_multi_rate_losses(
    z, labels, num_classes, pooling_rates=(1,), ignore_label=255, align_corners=True, **options
):
    """CAR terms on `z [N, H, W, C]` summed over `pooling_rates`.

    `labels [N, H', W']` may be at the input or the feature size: they are nearest-resized
    to each pooled size (`iseg.ops.resize_labels`). Options as `car_losses`.
    """
    total = {}
    for rate in _check_rates(pooling_rates):
        pooled = pool_features(z, rate)
        pooled_labels = resize_labels(labels, spatial_shape(pooled), align_corners)
        for name, value in car_losses(
            pooled, pooled_labels, num_classes, ignore_label, **options
        ).items():
            total[name] = total[name] + value if name in total else value
    return total


@keras.saving.register_keras_serializable(package="iseg")
class CARLoss(keras.layers.Layer):
    """CAR losses as a layer: `layer(z, labels) -> {"intra", "inter_c2c", "inter_c2p"}`.

    Stateless unless `use_ema_centers=True`: then one non-trainable `[K, C]` centre buffer
    per pooling rate (float32, Glorot-uniform initialised as the original) is moved towards
    the batch centres of the classes present, `mu_ema += (1 - ema_decay) * (mu - mu_ema)`,
    on every training call, and the losses read the updated buffer (no gradient through it).
    `shared_ema_centers=True` keeps one buffer for all rates, moved once per rate in the
    order of `pooling_rates` (the original code's `last_class_center`).
    Call it during training only; it adds nothing at inference.
    """

    def __init__(
        self,
        num_classes,
        ignore_label=255,
        pooling_rates=(1,),
        align_corners=True,
        use_intra=True,
        use_inter_c2c=True,
        use_inter_c2p=True,
        intra_loss_rate=1.0,
        inter_loss_rate=1.0,
        inter_c2c_threshold=0.5,
        inter_c2p_threshold=0.25,
        remove_max=False,
        mask_ignored_c2p=False,
        use_ema_centers=False,
        ema_decay=0.9,
        shared_ema_centers=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        _check_num_classes(num_classes)
        self.num_classes = int(num_classes)
        self.ignore_label = int(ignore_label)
        self.pooling_rates = _check_rates(pooling_rates)
        self.align_corners = align_corners
        self.use_intra = use_intra
        self.use_inter_c2c = use_inter_c2c
        self.use_inter_c2p = use_inter_c2p
        self.intra_loss_rate = intra_loss_rate
        self.inter_loss_rate = inter_loss_rate
        self.inter_c2c_threshold = inter_c2c_threshold
        self.inter_c2p_threshold = inter_c2p_threshold
        self.remove_max = remove_max
        self.mask_ignored_c2p = mask_ignored_c2p
        self.use_ema_centers = use_ema_centers
        self.ema_decay = ema_decay
        self.shared_ema_centers = shared_ema_centers

    def build(self, z_shape, labels_shape=None):
        self.ema_centers = []
        if self.use_ema_centers:
            names = ["ema_centers"] if self.shared_ema_centers else [
                f"ema_centers_rate{rate}" for rate in self.pooling_rates
            ]
            for name in names:
                self.ema_centers.append(
                    self.add_weight(
                        shape=(self.num_classes, int(z_shape[-1])),
                        initializer="glorot_uniform",
                        dtype="float32",
                        trainable=False,
                        aggregation="only_first_replica",
                        name=name,
                    )
                )
        self.built = True

    def _options(self):
        return dict(
            use_intra=self.use_intra,
            use_inter_c2c=self.use_inter_c2c,
            use_inter_c2p=self.use_inter_c2p,
            intra_loss_rate=self.intra_loss_rate,
            inter_loss_rate=self.inter_loss_rate,
            inter_c2c_threshold=self.inter_c2c_threshold,
            inter_c2p_threshold=self.inter_c2p_threshold,
            remove_max=self.remove_max,
            mask_ignored_c2p=self.mask_ignored_c2p,
        )

    def call(self, z, labels):
        if not self.use_ema_centers:
            return car_multi_rate_losses(
                z, labels, self.num_classes, self.pooling_rates, self.ignore_label,
                self.align_corners, **self._options()
            )
        total = {}
        buffers = self.ema_centers * len(self.pooling_rates) if self.shared_ema_centers else (
            self.ema_centers
        )
        for rate, buffer in zip(self.pooling_rates, buffers):
            pooled = pool_features(z, rate)
            pooled_labels = resize_labels(labels, spatial_shape(pooled), self.align_corners)
            losses, centers = _car_terms(
                pooled, pooled_labels, self.num_classes, self.ignore_label,
                ema_centers=buffer.value, ema_decay=self.ema_decay, **self._options()
            )
            buffer.assign(centers)
            for name, value in losses.items():
                total[name] = total[name] + value if name in total else value
        return total

    def compute_output_spec(self, z, labels):
        return {
            n: keras.KerasTensor((), dtype="float32") for n in ("intra", "inter_c2c", "inter_c2p")
        }

    def get_config(self):
        config = super().get_config()
        config.update(
            num_classes=self.num_classes,
            ignore_label=self.ignore_label,
            pooling_rates=list(self.pooling_rates),
            align_corners=self.align_corners,
            use_ema_centers=self.use_ema_centers,
            ema_decay=self.ema_decay,
            shared_ema_centers=self.shared_ema_centers,
            **self._options(),
        )
        return config
