"""HFGD: high-level feature guided decoder (METHODS.md 4, 10.4). A reconstruction: no code or
full text exists; every inner choice below is [INFERRED] and swappable by option.

    high-level branch:  G = ContextModule(context_channels=256, mixer)(c5)      (OS32)
                        S_hi = tokens(dropout(G))     tokens = the head's 1x1 classifier
    upsampler:          levels = gs(c2), gs(c3), gs(c4), gs(G)  (+ gs(stem) first for OS2)
                        FPN(256, 1x1 laterals, top-down add, top = G as is)
                        -> SemanticFPN(128) -> U = ConvBNAct(context_channels, 1x1)(.)
                        S_up = U . gs(tokens)       (the upsampler reuses the class tokens)
    gs = GradientScale(gradient_scale): forward identity, backward `scale * dy` (0 = stop).

`S_up` is the model's prediction (`logits`); `S_hi` (`high_level_logits`) is trained with its
own pixel cross-entropy of weight `high_level_weight`. With `gradient_scale=0` the upsampler
loss never reaches the backbone, the context module or the class tokens, and the high-level
loss never reaches the upsampler.
"""

import keras
from keras import ops

from iseg.heads._util import endpoint
from iseg.heads.base import Head
from iseg.heads.registry import HEADS
from iseg.layers.conv_bn_act import ConvBNAct
from iseg.layers.fpn import FPN, SemanticFPN
from iseg.layers.grad_scale import scale_gradient
from iseg.layers.multihead_axial_attention import ContextModule


@HEADS.register("hfgd")
@keras.saving.register_keras_serializable(package="iseg")
class HFGDHead(Head):
    """HFGD head on c2..c5 (and the stem feature for `output_stride=2`).

    Args:
        context_channels: width of the context module, the FPN and the class tokens (256).
        mixer, num_heads: the context module's token mixer ("axial", 4 heads | "caa").
        fpn_channels: width of the SemanticFPN block (128).
        output_stride: 4 (c2 finest) or 2 (the stem feature as an extra finest level).
        gradient_scale: backward scale of every backbone feature, the context output and the
            class tokens on their way into the upsampler (0: stop-gradient).
        high_level_weight: weight of the high-level pixel cross-entropy (1.0).
        align_corners: of the upsampler's bilinear resizes (False).
    """

    def __init__(
        self,
        num_classes,
        context_channels=256,
        mixer="axial",
        num_heads=4,
        fpn_channels=128,
        output_stride=4,
        gradient_scale=0.0,
        high_level_weight=1.0,
        align_corners=False,
        in_keys=("c2", "c3", "c4", "c5"),
        stem_key="stem",
        **kwargs,
    ):
        if kwargs.get("car") is not None:
            raise ValueError("hfgd: CAR is not supported on the HFGD head (car= given)")
        super().__init__(num_classes, **kwargs)
        if output_stride not in (2, 4):
            raise ValueError(f"hfgd: output_stride must be 2 or 4, got {output_stride!r}")
        self.context_channels = context_channels
        self.mixer = mixer
        self.num_heads = num_heads
        self.fpn_channels = fpn_channels
        self.output_stride = output_stride
        self.gradient_scale = float(gradient_scale)
        self.high_level_weight = float(high_level_weight)
        self.align_corners = align_corners
        self.in_keys = tuple(in_keys)
        self.stem_key = stem_key
        norm = dict(self.norm_kwargs, dtype=self.dtype_policy)
        self.context = ContextModule(
            context_channels, mixer=mixer, num_heads=num_heads, name="context", **norm
        )
        self.fpn = FPN(
            context_channels,
            process_top=False,
            output_convs=False,
            align_corners=align_corners,
            name="fpn",
            **norm,
        )
        self.semantic_fpn = SemanticFPN(
            fpn_channels, align_corners=align_corners, name="semantic_fpn", **norm
        )
        self.up_projection = ConvBNAct(context_channels, 1, name="up_projection", **norm)
        self._init_end(None)

    def build(self, input_shape):
        # the upsampler reads the class tokens' weights directly: create them first
        self.classifier.build((None, None, None, self.context_channels))
        super().build(input_shape)

    def _gs(self, x):
        return scale_gradient(x, self.gradient_scale)

    def call(self, endpoints, training=None):
        features = [endpoint(endpoints, key, "hfgd") for key in self.in_keys]
        high = self.context(features[-1], training=training)

        levels = [self._gs(f) for f in features[:-1]] + [self._gs(high)]
        if self.output_stride == 2:
            levels.insert(0, self._gs(endpoint(endpoints, self.stem_key, "hfgd")))
        x = self.semantic_fpn(self.fpn(levels, training=training), training=training)
        up = self.up_projection(x, training=training)
        kernel, bias = (ops.cast(w, up.dtype) for w in self.sar_classifier())
        logits = ops.einsum("nhwc,ck->nhwk", self.dropout(up, training=training), kernel) + bias
        out = {"logits": logits, "feature": up, "classifier_input": up}
        if training:  # the high-level branch is training-only (not in an export)
            out["high_level_logits"] = self.classifier(self.dropout(high, training=training))
        return out

    def endpoint_keys(self):
        return list(self.in_keys) + ([self.stem_key] if self.output_stride == 2 else [])

    def sar_classifier(self):
        """The class tokens as the upsampler sees them (behind the gradient scale)."""
        return self._gs(self.classifier.kernel[0, 0]), self._gs(self.classifier.bias)

    def get_config(self):
        config = super().get_config()
        config.update(
            context_channels=self.context_channels,
            mixer=self.mixer,
            num_heads=self.num_heads,
            fpn_channels=self.fpn_channels,
            output_stride=self.output_stride,
            gradient_scale=self.gradient_scale,
            high_level_weight=self.high_level_weight,
            align_corners=self.align_corners,
            in_keys=list(self.in_keys),
            stem_key=self.stem_key,
        )
        return config
