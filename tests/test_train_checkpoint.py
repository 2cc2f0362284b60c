"""Checkpoints of real (tiny) zoo models: every weight round-trips (BN statistics in
functional backbones and layer lists included); a different model is named precisely."""

import numpy as np
import pytest

from iseg.training.checkpoints import TrainCheckpointer, check_compatible, restore_model
from iseg.training.config import DatasetMeta, TrainConfig, build_model_from_config
from iseg.errors import CheckpointMismatchError
from iseg.training.optimizers import build_optimizer, prepare_optimizer

META = DatasetMeta(num_classes=3, class_names=["a", "b", "c"], palette=[(0, 0, 0)] * 3)
TINY = dict(head="fcn", backbone="resnet18", aux_weight=0.4,
            backbone_options=dict(depths=(1, 1, 1, 1), widths=(4, 4, 8, 8), stem_width=8))


def _model(channels=8):
    return build_model_from_config(
        TrainConfig(head_options=dict(channels=channels, end_channels=8), **TINY), META)


def test_every_weight_and_optimizer_slot_round_trips(tmp_path):
    a = _model()
    opt = build_optimizer("sgd", 0.1, momentum=0.9)
    prepare_optimizer(opt, a)
    rng = np.random.default_rng(0)
    for v in list(a.weights) + list(opt.variables):
        if v.dtype == "float32":
            v.assign(rng.normal(size=v.shape).astype(np.float32))
    TrainCheckpointer(str(tmp_path), model=a, optimizer=opt).save(7)
    b = _model()
    restore_model(b, str(tmp_path))
    assert len(a.weights) == len(b.weights)
    for x, y in zip(a.weights, b.weights):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=x.path)
    # training resume restores the optimizer slots too
    c = _model()
    opt_c = build_optimizer("sgd", 0.1, momentum=0.9)
    prepare_optimizer(opt_c, c)
    assert TrainCheckpointer(str(tmp_path), model=c, optimizer=opt_c).restore_latest()
    for x, y in zip(opt.variables, opt_c.variables):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_checkpoint_of_a_different_model_names_the_variables(tmp_path):
    a = _model(channels=8)
    opt = build_optimizer("sgd", 0.1)
    prepare_optimizer(opt, a)
    path = TrainCheckpointer(str(tmp_path), model=a, optimizer=opt).save(1)
    with pytest.raises(CheckpointMismatchError) as e:
        check_compatible(path, _model(channels=16))
    msg = str(e.value)
    assert "does not match the model" in msg and "different shapes" in msg
    assert "down_conv/conv/kernel checkpoint (3, 3, 8, 8) vs model (3, 3, 8, 16)" in msg
    no_aux = build_model_from_config(
        TrainConfig(head_options=dict(channels=8, end_channels=8), **dict(TINY, aux_weight=0)),
        META)
    with pytest.raises(CheckpointMismatchError, match="checkpoint variables not in the "
                       "model: .*fcn_aux"):
        restore_model(no_aux, path)
