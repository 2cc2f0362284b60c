"""CAR is training-only: the inference graph of X+CAR has no CAR loss op, and X+CAR differs
from X only by the CAR block's 1x1 convs (which replace the head's end conv)."""

import numpy as np
import tensorflow as tf

from iseg.models import build_model_from_name

BACKBONE = dict(depths=(1, 1, 1, 1), widths=(4, 4, 8, 8), stem_width=8)


def build(name, car=None):
    return build_model_from_name(name, 5, backbone_options=BACKBONE, aux_weight=0, car=car,
                                 head_options=dict(channels=16, key_filters=4))


def op_types(fn, spec):
    graph = tf.function(fn).get_concrete_function(spec).graph
    return {op.type for op in graph.get_operations()}


def count(weights):
    return sum(int(np.prod(w.shape)) for w in weights)


def test_inference_graph_has_no_car_computation():
    model = build("nl_resnet50_d8", car={})
    spec = tf.TensorSpec((1, 33, 33, 3), tf.float32)
    labels = tf.zeros((1, 33, 33), tf.int32)
    infer = op_types(lambda x: model(x, training=False), spec)
    train = op_types(lambda x: model.compute_loss(x, labels, model(x, training=True)), spec)
    segment_ops = {"UnsortedSegmentSum", "SegmentSum", "SegmentSumV2"}
    assert train & segment_ops, "the training graph should contain CAR's segment sums"
    assert not infer & segment_ops


def test_car_adds_only_its_one_by_one_convs():
    base, car = build("nl_resnet50_d8"), build("nl_resnet50_d8", car={})
    block = car.head.car
    added = count(block.linear_conv.weights) + count(block.end_conv.conv.weights)
    removed = count(base.head.end_conv.conv.weights)
    assert block.linear_conv.kernel.shape[:2] == (1, 1)
    assert block.end_conv.conv.kernel.shape[:2] == (1, 1)
    assert count(car.trainable_weights) - count(base.trainable_weights) == (
        added - removed
        + count(block.end_conv.bn.trainable_weights)
        - count(base.head.end_conv.bn.trainable_weights)
    )
