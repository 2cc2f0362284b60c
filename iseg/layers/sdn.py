"""SDN, the semantic diffusion neck (Tan, Wu, Pi, arXiv 2302.02057), as reconstructed here.

No official code exists and the paper's exact formula is unconfirmed (SEMI.md §7). This is
the reconstruction of its semantic difference convolution (SDC) and fusion, following the
closest public 2D adaptation; every part is an option:

    g'  = BN(Conv3x3(g -> C))                     guidance projected to x's width C
    d_x = DWConv3x3(x; k_x),  d_g = DWConv3x3(g'; k_g)
                                                  per-channel "diagonal difference" kernels:
                                                  random, corners (TL, TR, BL, BR) set to
                                                  (-1, +1, +1, -1), trainable
    SDC = Conv3x3(d_x * d_g ** guidance_power)    (power 2: the guidance's difference
                                                  magnitude weights x's, sign-free)
    y   = x + ReLU(BN(SDC))                       residual fusion

`SemanticDiffusionNeck` applies one such unit to each endpoint a head reads, between the
backbone and the head (`SegmentationModel(neck="sdn")`); the guidance g of an endpoint is
the next deeper backbone endpoint resized to its size (`guidance="deeper"`; the deepest
one guides itself) or the endpoint itself (`guidance="self"`).
"""

import keras
import numpy as np
from keras import ops

from iseg.layers.conv_bn_act import ConvBlock, ConvBNAct
from iseg.ops import resize, spatial_shape

#: Backbone endpoints from shallow to deep ("deeper" guidance follows this order).
ENDPOINT_ORDER = ("stem", "c2", "c3", "c4", "c5")
GUIDANCES = ("deeper", "self")


@keras.saving.register_keras_serializable(package="iseg")
class DiagonalDifference(keras.initializers.Initializer):
    """Depthwise kernel `[k, k, C, 1]`: He-uniform random with the four corners set to
    (-1, +1, +1, -1) (top-left, top-right, bottom-left, bottom-right)."""

    def __init__(self, seed=None):
        self.seed = seed

    def __call__(self, shape, dtype=None):
        corners = np.zeros(shape, "float32")
        corners[0, 0], corners[0, -1], corners[-1, 0], corners[-1, -1] = -1, 1, 1, -1
        keep = np.ones(shape, "float32")
        keep[0, 0] = keep[0, -1] = keep[-1, 0] = keep[-1, -1] = 0
        base = keras.initializers.HeUniform(seed=self.seed)(shape, dtype=dtype)
        return base * ops.cast(keep, base.dtype) + ops.cast(corners, base.dtype)

    def get_config(self):
        return {"seed": self.seed}


@keras.saving.register_keras_serializable(package="iseg")
class SemanticDifferenceFusion(ConvBlock):
    """One SDN unit: `call(x, guidance) -> x + ReLU(BN(SDC(x, guidance)))` (module doc).

    Args:
      guidance_power: exponent of the guidance difference in the product (2).
      sdc_kernel_size: kernel of the SDC conv (3).
      difference_init: initializer of the depthwise difference kernels ("diagonal": the
        corner init above; or any Keras initializer name).
      trainable_difference: whether the difference kernels train (True).
    """

    def __init__(self, guidance_power=2, sdc_kernel_size=3, difference_init="diagonal",
                 trainable_difference=True, **kwargs):
        super().__init__(**kwargs)
        self.guidance_power = guidance_power
        self.sdc_kernel_size = sdc_kernel_size
        self.difference_init = difference_init
        self.trainable_difference = bool(trainable_difference)

    def _difference(self, name):
        init = DiagonalDifference() if self.difference_init == "diagonal" else self.difference_init
        return keras.layers.DepthwiseConv2D(
            3, padding="same", use_bias=False, depthwise_initializer=init,
            trainable=self.trainable_difference, dtype=self.dtype_policy, name=name,
        )

    def build(self, x_shape, guidance_shape):
        channels = x_shape[-1]
        self.guide = ConvBNAct(channels, 3, activation=None, name="guide", **self.conv_options)
        self.diff_x = self._difference("diff_x")
        self.diff_g = self._difference("diff_g")
        self.sdc = ConvBNAct(channels, self.sdc_kernel_size, name="sdc", **self.conv_options)
        self.guide.build(guidance_shape)
        self.diff_x.build(x_shape)
        self.diff_g.build(tuple(guidance_shape[:-1]) + (channels,))
        self.sdc.build(x_shape)
        self.built = True

    def call(self, x, guidance, training=None):
        d_x = self.diff_x(x)
        d_g = self.diff_g(self.guide(guidance, training=training))
        return x + self.sdc(d_x * d_g**self.guidance_power, training=training)

    def compute_output_shape(self, x_shape, guidance_shape):
        return x_shape

    def get_config(self):
        config = super().get_config()
        config.update(guidance_power=self.guidance_power, sdc_kernel_size=self.sdc_kernel_size,
                      difference_init=self.difference_init,
                      trainable_difference=self.trainable_difference)
        return config


@keras.saving.register_keras_serializable(package="iseg")
class SemanticDiffusionNeck(keras.layers.Layer):
    """An SDN unit on each of `keys` of an endpoint dict; the other endpoints pass through.

    Args:
      keys: the endpoints to diffuse (a model passes its head's `endpoint_keys()`).
      guidance: "deeper" (the next deeper endpoint of `ENDPOINT_ORDER` present, resized
        bilinearly; the deepest guides itself) or "self".
      align_corners: resize convention of the deeper guidance.
      **unit: options of `SemanticDifferenceFusion` (guidance_power, sdc_kernel_size,
        difference_init, trainable_difference, bn_momentum, bn_epsilon, kernel_initializer).
    """

    def __init__(self, keys, guidance="deeper", align_corners=True, **kwargs):
        unit = {k: kwargs.pop(k) for k in UNIT_OPTIONS if k in kwargs}
        super().__init__(**kwargs)
        if guidance not in GUIDANCES:
            raise ValueError(f"sdn: guidance must be one of {', '.join(GUIDANCES)}, "
                             f"got {guidance!r}")
        self.keys = list(keys)
        self.guidance = guidance
        self.align_corners = bool(align_corners)
        self.unit_options = unit
        self.units = {
            key: SemanticDifferenceFusion(name=f"sdn_{key}", dtype=self.dtype_policy, **unit)
            for key in self.keys
        }

    def _guide_key(self, key, available):
        if self.guidance == "self" or key not in ENDPOINT_ORDER:
            return key
        deeper = [k for k in ENDPOINT_ORDER[ENDPOINT_ORDER.index(key) + 1:] if k in available]
        return deeper[0] if deeper else key

    def build(self, input_shape):
        shapes = {k: tuple(v) for k, v in dict(input_shape).items()}
        for key, unit in self.units.items():
            guide = shapes[self._guide_key(key, shapes)]
            unit.build(shapes[key], shapes[key][:-1] + guide[-1:])
        self.built = True

    def call(self, endpoints, training=None):
        out = dict(endpoints)
        for key, unit in self.units.items():
            x = endpoints[key]
            g = endpoints[self._guide_key(key, endpoints)]
            g = resize(g, spatial_shape(x), align_corners=self.align_corners)
            out[key] = unit(x, g, training=training)
        return out

    def compute_output_shape(self, input_shape):
        return dict(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(keys=self.keys, guidance=self.guidance, align_corners=self.align_corners,
                      **self.unit_options)
        return config


UNIT_OPTIONS = ("guidance_power", "sdc_kernel_size", "difference_init", "trainable_difference",
                "bn_momentum", "bn_epsilon", "kernel_initializer")
NECK_OPTIONS = ("keys", "guidance", "align_corners") + UNIT_OPTIONS


def check_neck_options(options):
    """`options` of `--neck=sdn` (`--neck_options`), or ValueError naming the unknown option
    or the bad value."""
    unknown = sorted(set(options) - set(NECK_OPTIONS))
    if unknown:
        raise ValueError(f"unknown sdn option(s) {', '.join(unknown)}; valid: "
                         f"{', '.join(NECK_OPTIONS)}")
    for key, value in options.items():
        need = _bad_neck_value(key, value)
        if need:
            raise ValueError(f"sdn: {key} must be {need}, got {value!r}")
    return dict(options)


def _bad_neck_value(key, value):
    """What option `key` needs when `value` does not fit, else None."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if key == "guidance":
        return None if value in GUIDANCES else "one of " + ", ".join(GUIDANCES)
    if key == "keys":
        ok = isinstance(value, (list, tuple)) and all(isinstance(k, str) for k in value)
        return None if ok else "a list of endpoint names"
    if key in ("align_corners", "trainable_difference"):
        return None if isinstance(value, bool) else "True or False"
    if key == "sdc_kernel_size":
        return None if number and value == int(value) and value > 0 else "a positive integer"
    if key in ("difference_init", "kernel_initializer"):
        return None if _initializer(value) else "an initializer name"
    return None if number else "a number"  # guidance_power, bn_momentum, bn_epsilon


def _initializer(value):
    if value == "diagonal" or not isinstance(value, str):
        return True
    try:
        keras.initializers.get(value)
    except ValueError:
        return False
    return True
