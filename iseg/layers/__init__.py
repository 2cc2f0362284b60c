"""Reusable Keras 3 layers (keras.ops only): usable in any Keras model on any backend."""

from iseg.layers.conv_bn_act import ConvBNAct, ImageLevel
