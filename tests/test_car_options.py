"""CAR has one switch (`car=` / `--car`) and one options object, resolved once against the
head's defaults and handed to the head's CAR block and to `CARLoss`."""

import pytest

from iseg.losses import CAROptions
from iseg.models import parse_model_name
from iseg.training.config import DatasetMeta, TrainConfig, build_model_from_config
from iseg.errors import ConfigError

META = DatasetMeta(num_classes=3, class_names=["a", "b", "c"], palette=[(0, 0, 0)] * 3)
TINY = dict(backbone_options=dict(depths=(1, 1, 1, 1), widths=(4, 4, 8, 8), stem_width=8),
            head_options=dict(channels=8), aux_weight=0.0)


def tiny_cfg(**kw):
    return TrainConfig(model="deeplabv3plus_resnet50_d8", **{**TINY, **kw})


def test_one_options_object_reaches_head_and_loss():
    model = build_model_from_config(
        tiny_cfg(car=True, car_options=dict(filters=6, inter_loss_rate=0.5)), META)
    # the head's defaults (DeepLabV3+: pooling rate 2) fill what was not given
    assert model.car == CAROptions(filters=6, pooling_rates=(2,), inter_loss_rate=0.5)
    assert model.head.car_options == model.car
    assert model.head.car.filters == 6
    loss = model.car_loss
    assert loss.pooling_rates == (2,) and loss.inter_loss_rate == 0.5
    assert loss.intra_loss_rate == 1.0


def test_without_the_switch_there_is_no_car():
    model = build_model_from_config(tiny_cfg(), META)
    assert model.car is None and model.car_loss is None and model.head.car is None


def test_the_model_name_is_not_a_switch():
    with pytest.raises(ValueError, match=r"CAR is switched on by car= / --car.*'nl_resnet50_d8'"):
        parse_model_name("nl_resnet50_d8_car")
    with pytest.raises(ConfigError, match="nl_resnet50_d8"):
        build_model_from_config(TrainConfig(model="nl_resnet50_d8_car"), META)


def test_option_errors():
    with pytest.raises(ConfigError, match="--car_options given without --car"):
        build_model_from_config(tiny_cfg(car_options=dict(filters=6)), META)
    with pytest.raises(ConfigError, match=r"--car_options: Unknown CAR option\(s\) rates\. "
                                          r"Valid CAR options: filters, pooling_rates"):
        build_model_from_config(tiny_cfg(car=True, car_options=dict(rates=(1,))), META)
    with pytest.raises(ValueError, match="pooling_rates must be positive"):
        CAROptions(pooling_rates=(0,))


def test_head_instance_carries_its_own_car():
    from iseg.heads import build_head
    from iseg.models import SegmentationModel

    head = build_head("fcn", 3, channels=8, car=dict(filters=4, pooling_rates=(1, 2)))
    model = SegmentationModel("resnet18", head, 3, backbone_options=TINY["backbone_options"],
                              aux_weight=0)
    assert model.car is head.car_options and model.car_loss.pooling_rates == (1, 2)
    with pytest.raises(ValueError, match="give a head instance its CAR options"):
        SegmentationModel("resnet18", head, 3, car={}, backbone_options=TINY["backbone_options"])
