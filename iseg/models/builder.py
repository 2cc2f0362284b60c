"""`build_model` and the model zoo: named configurations used by configs and the CLI.

A zoo name is either a preset registered in `MODELS` (e.g. `demo_tiny`,
`caa_convnext_large_jpu`) or any `<head>_<backbone>` pair of registered names (e.g.
`deeplabv3_resnet50_d8`). CAR is not part of the name: it is switched on by the model's
`car` option (`--car`), except that heads designed around CAR (`car_by_default`: CARD)
have it on by default (`card_convnext_tiny`).
"""

from iseg.models.segmentation_model import SegmentationModel
from iseg.registry import Registry

MODELS = Registry("model")


def build_model(head, backbone, num_classes, *, input_shape=(None, None, 3), **options):
    """Build and return a `SegmentationModel` (weights created for `input_shape`)."""
    model = SegmentationModel(backbone=backbone, head=head, num_classes=num_classes, **options)
    model.build((None, *input_shape))
    return model


def _preset(name, **kwargs):
    MODELS.register(name)(lambda: dict(kwargs))


_preset(
    "caa_convnext_large_jpu",
    head="caa",
    backbone="convnext_large",
    head_options={"use_jpu": True},
)


# The README demo's model: a narrow ResNet-18 (one block per stage, OS16) with a
# DeepLabV3+ head, small enough to train on the synthetic shapes in minutes on a CPU.
_preset(
    "demo_tiny",
    head="deeplabv3plus",
    backbone="resnet18",
    backbone_options={
        "depths": (1, 1, 1, 1),
        "widths": (16, 32, 48, 64),
        "stem_width": 16,
        "output_stride": 16,
    },
    head_options={"channels": 32, "low_level_channels": 16, "output_stride": 16},
    aux_weight=0.0,
)


def parse_model_name(name):
    """Resolve a zoo name to the keyword arguments of `build_model` (without num_classes)."""
    from iseg.backbones import BACKBONES
    from iseg.heads import HEADS

    if name in MODELS:
        return MODELS.get(name)()
    for head in sorted(HEADS.names(), key=len, reverse=True):
        if name.startswith(head + "_") and name[len(head) + 1 :] in BACKBONES:
            kwargs = {"head": head, "backbone": name[len(head) + 1 :]}
            if getattr(HEADS.get(head), "car_by_default", False):
                kwargs["car"] = {}  # CAR with the published defaults
            return kwargs
    hint = ""
    if name.endswith("_car"):
        hint = f" (CAR is switched on by car= / --car, not by the name: use {name[:-4]!r})"
    raise ValueError(
        f"Unknown model {name!r}{hint}. Valid models: the presets {', '.join(MODELS.names())}, "
        f"or '<head>_<backbone>' with head in {{{', '.join(HEADS.names())}}} and backbone "
        f"in {{{', '.join(BACKBONES.names())}}}"
    )


def build_model_from_name(name, num_classes, **overrides):
    """Build a zoo model by name; `overrides` replace or extend the preset's options
    (dict-valued options such as `head_options` are merged key by key)."""
    kwargs = parse_model_name(name)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(kwargs.get(key), dict):
            kwargs[key] = {**kwargs[key], **value}
        else:
            kwargs[key] = value
    return build_model(num_classes=num_classes, **kwargs)
