"""CAA: channelized axial attention (METHODS.md 5(b)), keras.ops only.

Column attention, then row attention; inside each, the attention-weighted map of every query
row (column) is re-weighted per channel by a sigmoid gate computed from that map by a small
MLP. No residual connection.

Two numerically equivalent forms:

- closed form (`group_size=None`, default): the gate of a query row is constant over the
  summed positions, so it factors out of the attention sum:
  `R1 = column_attention(v)`, `g = sigmoid(MLP(mean_w(R1) / H))`, `Y1 = g * R1` (and the same
  for rows with `1 / W`). Memory: the attention maps only (N*W*H*H + N*H*W*W).
- grouped form (`group_size=G`): the paper's formulation, materialising the weighted map
  `[N, G, H, W, C]` of G query rows (columns) at a time, pooling it for the gate and summing
  it. Needs static H and W. Kept as an option and as the test oracle of the closed form.
"""

import keras
from keras import ops

from iseg.layers.conv_bn_act import ConvBlock, ConvBNAct


@keras.saving.register_keras_serializable(package="iseg")
class ChannelGate(keras.layers.Layer):
    """`sigmoid(Dense(C)(leaky_relu(Dense(hidden)(...))))` with `hidden_layers` hidden
    Dense layers (no bias, leaky ReLU slope 0.2): the CAA channel attention MLP."""

    def __init__(self, filters, hidden=128, hidden_layers=5, **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.hidden = hidden
        self.hidden_layers = hidden_layers
        self.dense = [
            keras.layers.Dense(hidden, use_bias=False, dtype=self.dtype_policy, name=f"hidden{i}")
            for i in range(hidden_layers)
        ]
        self.out = keras.layers.Dense(filters, use_bias=False, dtype=self.dtype_policy, name="out")

    def build(self, input_shape):
        shape = tuple(input_shape)
        for layer in self.dense:
            layer.build(shape)
            shape = shape[:-1] + (self.hidden,)
        self.out.build(shape)
        self.built = True

    def call(self, x):
        for layer in self.dense:
            x = ops.leaky_relu(layer(x), negative_slope=0.2)
        return ops.sigmoid(self.out(x))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.filters,)

    def get_config(self):
        config = super().get_config()
        config.update(filters=self.filters, hidden=self.hidden, hidden_layers=self.hidden_layers)
        return config


def _softmax_attention(query, equation, dtype):
    """softmax over the last axis of the (unscaled) dot products, computed in float32."""
    logits = ops.einsum(equation, ops.cast(query, "float32"), ops.cast(query, "float32"))
    return ops.cast(ops.softmax(logits, axis=-1), dtype)


@keras.saving.register_keras_serializable(package="iseg")
class ChannelizedAxialAttention(ConvBlock):
    """Channelized axial attention block: `[N, H, W, Cin] -> [N, H, W, filters]`.

    Args:
        filters: value / output channels C (512 in the papers).
        guide_filters: query = key channels of each axial attention (64).
        mlp_hidden: hidden width of the gate MLPs (None: `filters // 4`).
        mlp_layers: hidden Dense layers of each gate MLP (5).
        group_size: None for the closed form; an int G for the grouped form over G query
            rows / columns at a time (the paper's low-memory loop).
        bn_momentum, bn_epsilon: of the three ConvBNReLU 1x1 projections.
    """

    def __init__(
        self,
        filters=512,
        guide_filters=64,
        mlp_hidden=None,
        mlp_layers=5,
        group_size=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if group_size is not None and int(group_size) < 1:
            raise ValueError(f"group_size must be None or a positive int, got {group_size!r}")
        self.filters = filters
        self.guide_filters = guide_filters
        self.mlp_hidden = mlp_hidden
        self.mlp_layers = mlp_layers
        self.group_size = group_size
        norm = self.conv_options
        self.query_col = ConvBNAct(guide_filters, 1, name="query_col", **norm)
        self.query_row = ConvBNAct(guide_filters, 1, name="query_row", **norm)
        self.value = ConvBNAct(filters, 1, name="value", **norm)
        hidden = mlp_hidden if mlp_hidden is not None else max(filters // 4, 1)
        gate = dict(hidden=hidden, hidden_layers=mlp_layers, dtype=self.dtype_policy)
        self.gate_col = ChannelGate(filters, name="gate_col", **gate)
        self.gate_row = ChannelGate(filters, name="gate_row", **gate)

    def build(self, input_shape):
        for layer in (self.query_col, self.query_row, self.value):
            layer.build(input_shape)
        self.gate_col.build((None, self.filters))
        self.gate_row.build((None, self.filters))
        self.built = True

    def attention_maps(self, x, training=None):
        """Column map `[N, W, H, H]` and row map `[N, H, W, W]` (softmax over the last axis)."""
        dtype = self.compute_dtype
        col = _softmax_attention(self.query_col(x, training=training), "nawg,nbwg->nwab", dtype)
        row = _softmax_attention(self.query_row(x, training=training), "nhag,nhbg->nhab", dtype)
        return col, row

    def call(self, x, training=None):
        col, row = self.attention_maps(x, training=training)
        v = self.value(x, training=training)
        if self.group_size is None:
            return self._closed_form(col, row, v)
        return self._grouped_form(col, row, v)

    def _closed_form(self, col, row, v):
        height, width = col.shape[-1] or ops.shape(col)[-1], row.shape[-1] or ops.shape(row)[-1]
        r1 = ops.einsum("nwab,nbwc->nawc", col, v)
        g1 = self.gate_col(ops.mean(r1, axis=2) / ops.cast(height, r1.dtype))  # [N, H, C]
        y1 = g1[:, :, None, :] * r1
        r2 = ops.einsum("nhab,nhbc->nhac", row, y1)
        g2 = self.gate_row(ops.mean(r2, axis=1) / ops.cast(width, r2.dtype))  # [N, W, C]
        return g2[:, None, :, :] * r2

    def _grouped_form(self, col, row, v):
        height, width = v.shape[1], v.shape[2]
        if height is None or width is None:
            raise ValueError(
                "ChannelizedAxialAttention(group_size=...) needs static height and width; "
                "use group_size=None (closed form) for dynamic shapes"
            )
        g = int(self.group_size)
        col_q = ops.transpose(col, (0, 2, 3, 1))  # [N, a, b, W]
        rows = []
        for start in range(0, height, g):
            weighted = col_q[:, start:start + g, :, :, None] * v[:, None]  # [N, g, H, W, C]
            gate = self.gate_col(ops.mean(weighted, axis=(2, 3)))  # [N, g, C]
            rows.append(ops.sum(gate[:, :, None, None, :] * weighted, axis=2))  # [N, g, W, C]
        y1 = ops.concatenate(rows, axis=1)  # [N, H, W, C]
        row_q = ops.transpose(row, (0, 2, 1, 3))  # [N, a, H, b]
        cols = []
        for start in range(0, width, g):
            weighted = row_q[:, start:start + g, :, :, None] * y1[:, None]  # [N, g, H, W, C]
            gate = self.gate_row(ops.mean(weighted, axis=(2, 3)))  # [N, g, C]
            cols.append(ops.sum(gate[:, :, None, None, :] * weighted, axis=3))  # [N, g, H, C]
        return ops.transpose(ops.concatenate(cols, axis=1), (0, 2, 1, 3))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.filters,)

    def get_config(self):
        config = super().get_config()
        config.update(
            filters=self.filters,
            guide_filters=self.guide_filters,
            mlp_hidden=self.mlp_hidden,
            mlp_layers=self.mlp_layers,
            group_size=self.group_size,
        )
        return config
