"""Head registry: `HEADS.register("name")` on a head class or builder."""

from iseg.registry import Registry

HEADS = Registry("head")


def build_head(name, num_classes, **options):
    """Build the head registered as `name` (e.g. "fcn", "deeplabv3", "caa")."""
    return HEADS.get(name)(num_classes=num_classes, **options)
