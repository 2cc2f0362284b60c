"""SAR: semantic anchor regularization (METHODS.md 1, 10.1; exact from the official code).

Training only. Fixed random anchors `A0` [K, D] (seeded, non-trainable) go through a
projector (Dense -> BN -> ReLU -> Dense -> BN -> ReLU, then a 1x1 ConvBNReLU; its BNs
normalise across the K anchors) to `E` [K, D], which the head's own classifier must classify
(no dropout):

    Z = E Wc + bc;  CE_k = -log softmax(Z_k)[k];  p_k = softmax(Z_k)[k]
    L_anchor = trade_off_ce * sum_k w_k CE_k,  w_k = log p~_k / (sum_j log p~_j + 1e-9),
               p~_k = 1 if p_k > filter_conf else p_k          (w not detached, as released)
    ready = every anchor classified correctly with p_k > update_conf
    if ready: M <- sg(E) on the first ready step, else M <- m M + (1 - m) sg(E)
    L_pull = ready * trade_off * (1 / |V|) sum_{valid pixels} (1 / D) ||f - sg(M[y'])||^2

`f` is the feature the head classifies (pre-dropout), `y'` the labels at its size (stride
slicing when the ratio is an integer, as PyTorch's legacy nearest; nearest resize otherwise).
The anchor CE reaches the projector and the classifier only; the pull loss reaches `f` only.
"""

import math

import keras
from keras import ops

from iseg.ops import resize_labels, spatial_shape

SAR_SEED = 1270964153  # the seed of the published configs
#: The options a user may set (`--sar_options`); `num_classes` and `ignore_label` come from
#: the model.
SAR_OPTIONS = ("trade_off", "trade_off_ce", "filter_conf", "update_conf", "momentum", "seed",
               "bn_momentum", "bn_epsilon")


def check_sar_options(options):
    """`options` as a dict, or a ValueError naming the first unknown option."""
    options = dict(options or {})
    for key in options:
        if key not in SAR_OPTIONS:
            raise ValueError(
                f"unknown SAR option {key!r}. Valid options: {', '.join(SAR_OPTIONS)}"
            )
    return options


def labels_at(labels, size):
    """Labels `[N, H, W]` at `size`: `labels[:, ::s, ::t]` for integer ratios, else nearest."""
    in_h, in_w = labels.shape[1], labels.shape[2]
    h, w = size
    static = all(isinstance(v, int) for v in (in_h, in_w, h, w))
    if static and in_h % h == 0 and in_w % w == 0:
        return labels[:, :: in_h // h, :: in_w // w]
    return resize_labels(labels, size, align_corners=False)


def anchor_terms(logits):
    """(CE_k, p_k, every anchor's argmax correct) from the `[K, K]` anchor logits."""
    num = logits.shape[0]
    eye = ops.eye(num, dtype="float32")
    log_probs = ops.log_softmax(logits, axis=-1)
    ce = -ops.sum(log_probs * eye, axis=-1)
    prob = ops.exp(-ce)
    return ce, prob, ops.all(ops.argmax(logits, axis=-1) == ops.arange(num))


@keras.saving.register_keras_serializable(package="iseg")
class SARRegularizer(keras.layers.Layer):
    """SAR as a layer: `layer(feature, labels, kernel, bias) -> {"sar_anchor", "sar_pull"}`.

    `kernel` [D, K] and `bias` [K] are the head's classifier. Call it in training only: it
    updates the semantic anchors. The returned terms are already weighted. `sar_ready` (0/1)
    is returned too, for logging.

    Args:
        num_classes: K. trade_off: pull-loss weight (0.1). trade_off_ce: anchor-CE weight (1).
        filter_conf (0.9), update_conf (0.8), momentum (EMA, 0.999), seed (of the anchors),
        ignore_label, bn_momentum / bn_epsilon (of the projector's BNs).
    """

    def __init__(
        self,
        num_classes,
        trade_off=0.1,
        trade_off_ce=1.0,
        filter_conf=0.9,
        update_conf=0.8,
        momentum=0.999,
        seed=SAR_SEED,
        ignore_label=255,
        bn_momentum=0.9,
        bn_epsilon=1e-5,
        **kwargs,
    ):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.num_classes = int(num_classes)
        self.trade_off = float(trade_off)
        self.trade_off_ce = float(trade_off_ce)
        self.filter_conf = float(filter_conf)
        self.update_conf = float(update_conf)
        self.momentum = float(momentum)
        self.seed = int(seed)
        self.ignore_label = int(ignore_label)
        self.bn_momentum = bn_momentum
        self.bn_epsilon = bn_epsilon

    def build(self, feature_shape, labels_shape=None, kernel_shape=None, bias_shape=None):
        dim = int(feature_shape[-1])
        self.dim = dim
        self.anchors = self.add_weight(
            shape=(self.num_classes, dim), initializer=keras.initializers.RandomNormal(
                0.0, 1.0, seed=self.seed), trainable=False, name="anchors",
        )
        self.semantic_anchors = self.add_weight(
            shape=(self.num_classes, dim), initializer="zeros", trainable=False,
            aggregation="only_first_replica", name="semantic_anchors",
        )
        self.initialized = self.add_weight(
            shape=(), initializer="zeros", trainable=False,
            aggregation="only_first_replica", name="initialized",
        )
        bn = dict(momentum=self.bn_momentum, epsilon=self.bn_epsilon, dtype=self.dtype_policy)
        fan_out = keras.initializers.VarianceScaling(2.0, "fan_out", "untruncated_normal")
        self.projector = [
            keras.layers.Dense(dim, dtype=self.dtype_policy, name="fc1"),
            keras.layers.BatchNormalization(name="bn1", **bn),
            keras.layers.Dense(dim, dtype=self.dtype_policy, name="fc2"),
            keras.layers.BatchNormalization(name="bn2", **bn),
            keras.layers.Dense(dim, use_bias=False, kernel_initializer=fan_out,
                               dtype=self.dtype_policy, name="conv"),  # the 1x1 conv on K x 1 x 1
            keras.layers.BatchNormalization(name="bn3", **bn),
        ]
        shape = (self.num_classes, dim)
        for layer in self.projector:
            layer.build(shape)
        self.built = True

    def project(self):
        """`E` [K, D]: the projected anchors (BNs in training mode, across the K anchors)."""
        x = ops.convert_to_tensor(self.anchors)
        for i in range(0, len(self.projector), 2):
            x = ops.relu(self.projector[i + 1](self.projector[i](x), training=True))
        return x

    def call(self, feature, labels, kernel, bias):
        embedded = self.project()
        logits = ops.matmul(embedded, ops.cast(kernel, "float32")) + ops.cast(bias, "float32")
        ce, prob, correct = anchor_terms(logits)
        # log p~ = log(1) for confident anchors, else log p = -CE (finite where p underflows)
        log_filtered = ops.where(prob > self.filter_conf, ops.zeros_like(ce), -ce)
        weights = log_filtered / (ops.sum(log_filtered) + 1e-9)
        anchor_loss = self.trade_off_ce * ops.sum(weights * ce)

        ready = ops.logical_and(correct, ops.all(ce < -math.log(self.update_conf)))
        readyf = ops.cast(ready, "float32")
        frozen = ops.stop_gradient(embedded)
        old = self.semantic_anchors.value
        ema = self.momentum * old + (1.0 - self.momentum) * frozen
        fresh = ops.where(self.initialized.value > 0, ema, frozen)
        anchors = ops.where(ready, fresh, old)
        self.semantic_anchors.assign(anchors)
        self.initialized.assign(ops.maximum(self.initialized.value, readyf))

        feature = ops.cast(feature, "float32")
        y = ops.cast(labels_at(labels, spatial_shape(feature)), "int32")
        valid = ops.logical_and(y != self.ignore_label, y < self.num_classes)
        valid = ops.logical_and(valid, y >= 0)
        onehot = ops.one_hot(ops.where(valid, y, 0), self.num_classes) * ops.cast(
            valid, "float32"
        )[..., None]
        target = ops.einsum("nhwk,kd->nhwd", onehot, ops.stop_gradient(anchors))
        err = ops.sum(ops.square(feature - target), axis=-1) / float(self.dim)
        count = ops.sum(ops.cast(valid, "float32"))
        pull = ops.sum(err * ops.cast(valid, "float32")) / ops.maximum(count, 1.0)
        return {
            "sar_anchor": anchor_loss,
            "sar_pull": readyf * self.trade_off * pull,
            "sar_ready": readyf,
        }

    def compute_output_spec(self, feature, labels, kernel, bias):
        scalar = keras.KerasTensor((), dtype="float32")
        return {"sar_anchor": scalar, "sar_pull": scalar, "sar_ready": scalar}

    def get_config(self):
        config = super().get_config()
        config.update(
            num_classes=self.num_classes,
            trade_off=self.trade_off,
            trade_off_ce=self.trade_off_ce,
            filter_conf=self.filter_conf,
            update_conf=self.update_conf,
            momentum=self.momentum,
            seed=self.seed,
            ignore_label=self.ignore_label,
            bn_momentum=self.bn_momentum,
            bn_epsilon=self.bn_epsilon,
        )
        return config
