"""The FACLSTM building blocks: ConvLSTM cell, convolutional focused attention, centre-mask
branch and the attention decoder that runs them step by step (pure Keras 3).

Reconstruction (METHODS.md §7(b), §10.7: only the abstract is known): the attention logits
are `e_t = Conv1x1(tanh(Conv(F') + Conv(H_{t-1})))`, a softmax over the h*w positions of
the map gives `alpha_t`, and the glimpse `G_t = alpha_t * F' * (h*w)` stays 2-D (the h*w
factor keeps a uniform attention at the scale of F'). The ConvLSTM cell reads `G_t`; the
previous character enters through an embedding added to the gate pre-activations (the
same as a convolution of the embedding broadcast over the map, away from the border).
The classifier reads the pooled hidden state and the attention context `sum(alpha_t F')`.
"""

import keras
from keras import ops

from iseg.layers.conv_bn_act import ConvBNAct

FOCUS_MODES = ("residual", "multiply", "none")
POOLINGS = ("avg", "max")


def focus_features(features, mask, mode):
    """`F' = F * (1 + M)` (residual), `F * M` (multiply) or `F` (none); `mask` [N,h,w,1]."""
    if mode not in FOCUS_MODES:
        raise ValueError(f"focus must be one of {FOCUS_MODES}, got {mode!r}")
    if mode == "residual":
        return features * (1.0 + mask)
    if mode == "multiply":
        return features * mask
    return features


def coordinate_maps(x):
    """`[N, h, w, 2]`: the x and y position of each cell, in [-1, 1]."""
    shape = ops.shape(x)
    h, w = shape[1], shape[2]
    ys = (ops.arange(h, dtype=x.dtype) + 0.5) / ops.cast(h, x.dtype) * 2.0 - 1.0
    xs = (ops.arange(w, dtype=x.dtype) + 0.5) / ops.cast(w, x.dtype) * 2.0 - 1.0
    grid = ops.stack([ops.broadcast_to(xs[None, :], (h, w)),
                      ops.broadcast_to(ys[:, None], (h, w))], axis=-1)
    return ops.zeros_like(x[..., :1]) + grid[None]


@keras.saving.register_keras_serializable(package="iseg")
class ConvLSTMCell(keras.layers.Layer):
    """One ConvLSTM step: gates `[i, f, g, o] = conv([x, h], W) + b (+ gate_bias)`,
    `c' = sigmoid(f + forget_bias) * c + sigmoid(i) * tanh(g)`, `h' = sigmoid(o) * tanh(c')`.

    `kernel` is `[k, k, C_x + filters, 4 * filters]` (input channels first, then the hidden
    state's), "same" padding. `call(x, h, c, gate_bias=None)` returns `(h', c')`; the
    optional `gate_bias` `[N, 4 * filters]` is added at every position.
    """

    def __init__(self, filters, kernel_size=3, forget_bias=1.0, **kwargs):
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.kernel_size = int(kernel_size)
        self.forget_bias = float(forget_bias)

    def build(self, input_shape):
        k, f = self.kernel_size, self.filters
        self.kernel = self.add_weight(
            name="kernel", shape=(k, k, int(input_shape[-1]) + f, 4 * f),
            initializer="glorot_uniform")
        self.bias = self.add_weight(name="bias", shape=(4 * f,), initializer="zeros")
        self.built = True

    def initial_state(self, x):
        """Zero `(h, c)` for an input `x` `[N, h, w, C]`."""
        zeros = ops.zeros_like(x[..., :1]) * ops.zeros((self.filters,), x.dtype)
        return zeros, zeros

    def call(self, x, h, c, gate_bias=None):
        z = ops.conv(ops.concatenate([x, h], axis=-1), self.kernel, padding="same")
        z = z + self.bias
        if gate_bias is not None:
            z = z + gate_bias[:, None, None, :]
        i, f, g, o = ops.split(z, 4, axis=-1)
        c = ops.sigmoid(f + self.forget_bias) * c + ops.sigmoid(i) * ops.tanh(g)
        return ops.sigmoid(o) * ops.tanh(c), c

    def get_config(self):
        config = super().get_config()
        config.update(filters=self.filters, kernel_size=self.kernel_size,
                      forget_bias=self.forget_bias)
        return config


@keras.saving.register_keras_serializable(package="iseg")
class FocusedAttention(keras.layers.Layer):
    """Additive attention computed by convolutions over a 2-D map.

    `keys(F')` precomputes `Conv_k(F')` (with two coordinate channels when `coordinates`)
    once per image; `call(keys, hidden, features, coverage)` returns the 2-D glimpse
    `alpha * features * (h*w)` and `alpha` `[N, h, w]`, a softmax over all h*w positions.
    With `coverage_kernel` the sum of the previous steps' attention maps `[N, h, w]` enters
    the energy through a convolution of that size (location-aware attention, Chorowski et
    al. 2015), which tells the decoder what it has already read.
    """

    def __init__(self, units, kernel_size=3, coordinates=True, coverage_kernel=(3, 9),
                 **kwargs):
        super().__init__(**kwargs)
        self.units = int(units)
        self.kernel_size = int(kernel_size)
        self.coordinates = bool(coordinates)
        self.coverage_kernel = None if not coverage_kernel else tuple(
            int(k) for k in coverage_kernel)
        conv = dict(padding="same", dtype=self.dtype_policy)
        self.feature_conv = keras.layers.Conv2D(units, kernel_size, name="feature_conv",
                                                **conv)
        self.state_conv = keras.layers.Conv2D(units, kernel_size, use_bias=False,
                                              name="state_conv", **conv)
        self.score_conv = keras.layers.Conv2D(1, 1, name="score_conv", **conv)
        self.coverage_conv = None if self.coverage_kernel is None else keras.layers.Conv2D(
            units, self.coverage_kernel, use_bias=False, name="coverage_conv", **conv)

    def build(self, keys_shape, hidden_shape, features_shape):
        extra = 2 if self.coordinates else 0
        self.feature_conv.build(tuple(features_shape[:-1]) + (features_shape[-1] + extra,))
        self.state_conv.build(hidden_shape)
        self.score_conv.build(tuple(keys_shape[:-1]) + (self.units,))
        if self.coverage_conv is not None:
            self.coverage_conv.build(tuple(keys_shape[:-1]) + (1,))
        self.built = True

    def keys(self, features):
        if self.coordinates:
            features = ops.concatenate([features, coordinate_maps(features)], axis=-1)
        return self.feature_conv(features)

    def call(self, keys, hidden, features, coverage=None):
        energy = keys + self.state_conv(hidden)
        if self.coverage_conv is not None and coverage is not None:
            energy = energy + self.coverage_conv(coverage[..., None])
        scores = self.score_conv(ops.tanh(energy))[..., 0]
        shape = ops.shape(scores)
        alpha = ops.reshape(ops.softmax(ops.reshape(scores, (shape[0], -1)), axis=-1), shape)
        area = ops.cast(shape[1] * shape[2], features.dtype)
        return features * alpha[..., None] * area, alpha

    def get_config(self):
        config = super().get_config()
        config.update(units=self.units, kernel_size=self.kernel_size,
                      coordinates=self.coordinates,
                      coverage_kernel=None if self.coverage_kernel is None
                      else list(self.coverage_kernel))
        return config


@keras.saving.register_keras_serializable(package="iseg")
class CentreMaskBranch(keras.layers.Layer):
    """Character-centre mask logits `[N, h, w, 1]` from the encoder map
    (ConvBNAct 3x3 -> Conv 1x1); `sigmoid` of them is the mask."""

    def __init__(self, filters=64, **kwargs):
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.conv = ConvBNAct(filters, 3, dtype=self.dtype_policy, name="conv")
        self.out = keras.layers.Conv2D(1, 1, dtype=self.dtype_policy, name="out")

    def build(self, input_shape):
        self.conv.build(input_shape)
        self.out.build(tuple(input_shape[:-1]) + (self.filters,))
        self.built = True

    def call(self, x, training=None):
        return self.out(self.conv(x, training=training))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (1,)

    def get_config(self):
        config = super().get_config()
        config.update(filters=self.filters)
        return config


@keras.saving.register_keras_serializable(package="iseg")
class FocusedAttentionDecoder(keras.layers.Layer):
    """The ConvLSTM attention decoder over a (focused) feature map `[N, h, w, C]`.

    Step t: `G_t, alpha_t = attention(H_{t-1})`; `H_t, C_t = ConvLSTM(G_t, embed(y_{t-1}))`;
    logits over `num_classes` (0 = end of word) from `[pool(H_t), sum(alpha_t F')]`.
    The start symbol is id `num_classes`. `call(features, prev_tokens)` is teacher forcing
    (`prev_tokens` `[N, T]`); `start` / `step` drive greedy and beam search.
    `classifier_units` > 0 puts a hidden ReLU layer of that width before the logits.
    """

    def __init__(self, num_classes, filters=64, attention_units=64, embed_dim=32,
                 kernel_size=3, pooling="avg", coordinates=True, coverage_kernel=(3, 9),
                 classifier_units=0, **kwargs):
        super().__init__(**kwargs)
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        self.num_classes = int(num_classes)
        self.filters = int(filters)
        self.attention_units = int(attention_units)
        self.embed_dim = int(embed_dim)
        self.kernel_size = int(kernel_size)
        self.pooling = pooling
        dt = dict(dtype=self.dtype_policy)
        self.embedding = keras.layers.Embedding(self.num_classes + 1, embed_dim,
                                                name="embedding", **dt)
        self.embed_gates = keras.layers.Dense(4 * self.filters, use_bias=False,
                                              name="embed_gates", **dt)
        self.coordinates = bool(coordinates)
        self.attention = FocusedAttention(attention_units, kernel_size, coordinates,
                                          coverage_kernel, name="attention", **dt)
        self.cell = ConvLSTMCell(filters, kernel_size, name="cell", **dt)
        self.classifier_units = int(classifier_units)
        if self.classifier_units < 0:
            raise ValueError(f"classifier_units must be >= 0, got {classifier_units!r}")
        self.classifier_hidden = None if self.classifier_units == 0 else keras.layers.Dense(
            self.classifier_units, activation="relu", name="classifier_hidden", **dt)
        self.classifier = keras.layers.Dense(self.num_classes, name="classifier", **dt)

    @property
    def go_token(self):
        return self.num_classes

    def build(self, feature_shape):
        hidden = tuple(feature_shape[:-1]) + (self.filters,)
        self.embedding.build((None,))
        self.embed_gates.build((None, self.embed_dim))
        keys = tuple(feature_shape[:-1]) + (self.attention_units,)
        self.attention.build(keys, hidden, feature_shape)
        self.cell.build(feature_shape)
        width = self.filters + int(feature_shape[-1])
        if self.classifier_hidden is not None:
            self.classifier_hidden.build((None, width))
            width = self.classifier_units
        self.classifier.build((None, width))
        self.built = True

    def start(self, features):
        """(constants, state) of a sequence: the attention keys; zero (h, c, coverage)."""
        h, c = self.cell.initial_state(features)
        return (features, self.attention.keys(features)), (h, c, h[..., 0])

    def step(self, prev_tokens, constants, state):
        """One step from the previous tokens `[N]`: (logits `[N, K]`, alpha, new state)."""
        features, keys = constants
        h, c, coverage = state
        glimpse, alpha = self.attention(keys, h, features, coverage)
        gate_bias = self.embed_gates(self.embedding(prev_tokens))
        h, c = self.cell(glimpse, h, c, gate_bias=gate_bias)
        coverage = coverage + alpha
        pooled = ops.mean(h, axis=(1, 2)) if self.pooling == "avg" else ops.max(h, axis=(1, 2))
        context = ops.sum(features * alpha[..., None], axis=(1, 2))
        read = ops.concatenate([pooled, context], axis=-1)
        if self.classifier_hidden is not None:
            read = self.classifier_hidden(read)
        logits = self.classifier(read)
        return logits, alpha, (h, c, coverage)

    def call(self, features, prev_tokens):
        constants, state = self.start(features)
        logits, alphas = [], []
        for t in range(prev_tokens.shape[1]):
            step_logits, alpha, state = self.step(prev_tokens[:, t], constants, state)
            logits.append(step_logits)
            alphas.append(alpha)
        return ops.stack(logits, axis=1), ops.stack(alphas, axis=1)

    def get_config(self):
        config = super().get_config()
        config.update(num_classes=self.num_classes, filters=self.filters,
                      attention_units=self.attention_units, embed_dim=self.embed_dim,
                      kernel_size=self.kernel_size, pooling=self.pooling,
                      coordinates=self.coordinates,
                      coverage_kernel=self.attention.get_config()["coverage_kernel"],
                      classifier_units=self.classifier_units)
        return config
