"""Small helpers shared by the heads."""

from keras import ops

from iseg.ops import resize, spatial_shape

VARIANTS = ("car", "mmseg")


def check_variant(head, variant):
    """Validate a head's `variant` ("car": the CAR TF code's layout, "mmseg")."""
    if variant not in VARIANTS:
        raise ValueError(
            f"{head}: unknown variant {variant!r}. Valid variants: {', '.join(VARIANTS)}"
        )
    return variant


def endpoint(endpoints, key, head):
    """`endpoints[key]` with an error that names the head and the available endpoints."""
    try:
        return endpoints[key]
    except KeyError:
        raise ValueError(
            f"{head} reads the backbone endpoint {key!r}, but the endpoints are "
            f"{sorted(endpoints)}"
        ) from None


def fuse_low_level(head, x, endpoints, head_name, training=None):
    """The DeepLabV3+ decoder step (DeepLabV3+ and KSAC heads): project the low-level
    endpoint with `head.low_level_conv`, upsample `x` to it (bilinear, `head.align_corners`),
    concatenate and fuse with `head.decoder_conv`."""
    low = head.low_level_conv(
        endpoint(endpoints, head.low_level_key, head_name), training=training
    )
    x = resize(x, spatial_shape(low), "bilinear", head.align_corners)
    return head.decoder_conv(ops.concatenate([x, low], axis=-1), training=training)
