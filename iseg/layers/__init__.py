"""Reusable Keras 3 layers (keras.ops only): usable in any Keras model on any backend."""

from iseg.layers.conv_bn_act import ConvBlock, ConvBNAct, ImageLevel
from iseg.layers.aspp import ASPP, LowLevelFusion, SeparableConvBNAct
from iseg.layers.ccnet import CrissCrossAttention
from iseg.layers.danet import ChannelAttention, PositionAttention
from iseg.layers.fpn import FPN, SemanticFPN
from iseg.layers.object_context import ObjectAttention, ObjectContext, SpatialGather
from iseg.layers.ppm import PPM, adaptive_avg_pool2d
from iseg.layers.self_attention import NonLocal2d, SelfAttention
from iseg.layers.axial_attention import ChannelGate, ChannelizedAxialAttention
from iseg.layers.jpu import JointPyramidUpsampling
from iseg.layers.ksac import KernelSharingASPP
from iseg.layers.car import CARBlock
from iseg.layers.grad_scale import GradientScale, scale_gradient
from iseg.layers.multihead_axial_attention import ContextModule, MultiHeadAxialAttention
from iseg.layers.correlation import CorrelationHead
from iseg.layers.sdn import DiagonalDifference, SemanticDifferenceFusion, SemanticDiffusionNeck
