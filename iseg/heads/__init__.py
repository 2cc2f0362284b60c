"""Segmentation heads. Each module registers its heads in `HEADS` on import."""

from iseg.heads.base import Head
from iseg.heads.registry import HEADS, build_head

# Head modules (each line imports one module so that its heads register):
from iseg.heads import ccnet, danet, deeplabv3, deeplabv3plus, fcn, ocr, self_attention, upernet  # noqa: F401,E501
from iseg.heads import caa, card, hfgd, ksac  # noqa: F401
