"""Small helpers shared by the heads."""

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
