"""Segmentation heads. Each module registers its heads in `HEADS` on import."""

from iseg.heads.base import Head
from iseg.heads.registry import HEADS, build_head

# Head modules (each line imports one module so that its heads register):
