"""Backbone names -> builders, `build_backbone` and the input normalisation per backbone."""

import functools
import inspect

from absl import logging

from iseg.backbones.convnext import CONVNEXT_SIZES, build_convnext
from iseg.backbones.hrnet import HRNET_WIDTHS, build_hrnet
from iseg.backbones.resnet import build_resnet
from iseg.backbones.swin import SWIN_SIZES, build_swin
from iseg.registry import Registry

BACKBONES = Registry("backbone")

ENDPOINTS = ("stem", "c2", "c3", "c4", "c5")

# Options every backbone accepts so that model builders can pass them uniformly; where an
# option means nothing for a family (BN settings for ConvNeXt / Swin) it is ignored.
COMMON_OPTIONS = ("output_stride", "multi_grid", "bn_momentum", "bn_epsilon", "drop_path_rate",
                  "layer_scale_init")

# Input normalisations: "imagenet" = RGB / 255, minus (0.485, 0.456, 0.406), divided by
# (0.229, 0.224, 0.225); "minus_one_to_one" = x / 127.5 - 1 (the original TF code).
NORMALIZATIONS = ("minus_one_to_one", "imagenet")


def _resnet(depth, **defaults):
    def builder(**options):
        return build_resnet(depth, **{**defaults, **options})

    builder.family = "resnet"
    builder.depth = depth
    builder.defaults = defaults
    builder.target = build_resnet
    return builder


def _builder(target, family, arg_name, arg, **defaults):
    """`target(arg, **defaults)`, described for the weight importers: its family, its size
    argument (`size` / `width`) and the defaults it passes."""
    builder = functools.partial(target, arg, **defaults)
    builder.family = family
    setattr(builder, arg_name, arg)
    builder.defaults = defaults
    builder.target = target
    return builder


def _convnext(size):
    return _builder(build_convnext, "convnext", "size", size)


def _swin(size, window_size=7):
    return _builder(build_swin, "swin", "size", size, window_size=window_size)


def _hrnet(width):
    return _builder(build_hrnet, "hrnet", "width", width)


for _depth in (18, 34, 50, 101, 152):
    BACKBONES.register(f"resnet{_depth}")(_resnet(_depth))

# The REFERENCE.md "ResNet-D8" layout: deep stem (64, 64, 128), stride in the last block,
# no conv bias, BN epsilon 1.001e-5, multi-grid (1, 2, 4) on conv5.
_D_LAYOUT = dict(stem="deep", stem_width=64, stride_in="last", multi_grid=(1, 2, 4))
for _depth in (50, 101):
    for _os in (8, 16):
        BACKBONES.register(f"resnet{_depth}_d{_os}")(
            _resnet(_depth, output_stride=_os, **_D_LAYOUT)
        )

for _size in CONVNEXT_SIZES:
    BACKBONES.register(f"convnext_{_size}")(_convnext(_size))

for _size in SWIN_SIZES:
    BACKBONES.register(f"swin_{_size}")(_swin(_size))
for _size in ("base", "large"):
    BACKBONES.register(f"swin_{_size}_w12")(_swin(_size, window_size=12))

for _width in HRNET_WIDTHS:
    BACKBONES.register(f"hrnetv2_w{_width}")(_hrnet(_width))


def _valid_options(builder):
    params = inspect.signature(builder.target).parameters
    return sorted(set(params) - {"depth", "size", "width", "name"})


def build_backbone(name, weights=None, input_shape=(None, None, 3), **options):
    """Build backbone `name` as a Keras model whose output is a dict of endpoints.

    Endpoints: "stem" (OS2; OS4 for ConvNeXt/Swin, which have no OS2 feature), "c2" (OS4),
    "c3" (OS8), "c4" (OS16, or OS8 when dilated), "c5" (the last feature map).

    `weights`: None (random init), "imagenet" (keras.applications' download, ResNet-50/101/
    152 v1 and ConvNeXt), or a path to a keras.applications `.h5` / `.weights.h5` file or a
    timm `.safetensors` file. A weight file fixes the layout options its checkpoint needs
    (e.g. stride in the 1x1 conv and conv biases for keras.applications ResNet); options
    passed here override those defaults.

    The model also carries `model.endpoint_channels` ({endpoint: channels}; the same is
    available from `endpoint_channels(model)` for a loaded model) and `model.build_options`:
    the effective options it was built with, the weight file's layout included, so that
    `build_backbone(name, **model.build_options)` rebuilds the same network without the file.
    """
    builder = BACKBONES.get(name)
    valid = _valid_options(builder)
    for key in options:
        if key not in valid and key not in COMMON_OPTIONS:
            raise ValueError(
                f"Unknown option {key!r} for backbone {name!r}. Valid options: "
                f"{', '.join(sorted(set(valid) | set(COMMON_OPTIONS)))}"
            )
    options = dict(options)
    family = builder.family
    if family != "resnet":
        output_stride = options.pop("output_stride", 32)
        if output_stride not in (None, 32):
            raise ValueError(
                f"Backbone {name!r} supports output_stride 32 only, got {output_stride!r}"
            )
        if options.pop("multi_grid", None):
            raise ValueError(f"multi_grid applies to ResNet backbones only, not {name!r}")
        ignored = {
            "convnext": ("bn_momentum", "bn_epsilon"),
            "swin": ("bn_momentum", "bn_epsilon", "layer_scale_init"),
            "hrnet": ("drop_path_rate", "layer_scale_init"),
        }[family]
        for key in ignored:
            if key in options:
                logging.debug("Backbone %s ignores option %s", name, key)
                options.pop(key)
    elif "layer_scale_init" in options:
        options.pop("layer_scale_init")

    source = None
    if weights is not None:
        from iseg.backbones import weights as weights_lib

        source = weights_lib.open_weights(weights, name, builder)
        options = {**source.layout_defaults(), **options}

    model = builder(input_shape=input_shape, name=name, **options)
    model.endpoint_channels = endpoint_channels(model)
    model.build_options = options
    if source is not None:
        source.load_into(model)
        logging.info("Loaded %s weights into backbone %s", source.description, name)
    return model


def endpoint_channels(model):
    """{endpoint: channels} of a backbone model (read from its output shapes)."""
    return {key: int(model.output[key].shape[-1]) for key in ENDPOINTS}


def backbone_normalization(name, weights=None):
    """The input normalisation backbone `name` expects: "imagenet" for every backbone.

    Every weight source we import was trained on ImageNet-normalised RGB (timm,
    keras.applications ConvNeXt, whose built-in preprocessing layer is not part of our
    model) or is converted to it: keras.applications ResNet weights expect Caffe-style BGR
    mean subtraction, and loading them adds an exact `CaffeInput` conversion layer in front
    of the stem. `weights` is accepted so that a future source with another convention can
    answer differently; an unknown name raises a ValueError listing the valid ones.
    """
    BACKBONES.get(name)
    del weights
    return "imagenet"
