"""iseg.backbones: ResNet (v1 / deep stem, dilated), ConvNeXt, Swin and HRNetV2 as Keras
models whose output is a dict of endpoints {"stem", "c2", "c3", "c4", "c5"}."""

from iseg.backbones.common import DropPath
from iseg.backbones.convnext import ConvNeXtBlock, ConvNeXtDownsample, build_convnext
from iseg.backbones.hrnet import ConvBNChain, HRFuse, ResizeConcat, build_hrnet
from iseg.backbones.registry import (
    BACKBONES,
    ENDPOINTS,
    backbone_normalization,
    build_backbone,
    endpoint_channels,
)
from iseg.backbones.resnet import ResNetBlock, ResNetStem, StemPool, build_resnet
from iseg.backbones.swin import PatchEmbed, PatchMerging, SwinBlock, build_swin
