"""The method interface: options, the registry, the semi flags' checks, SemiContext."""

import numpy as np
import pytest
import tensorflow as tf

from iseg.errors import ConfigError
from iseg.semi import methods as semi_methods
from iseg.semi.methods.base import SemiContext, SemiMethod
from iseg.training.config import TrainConfig, check_config


class _Toy(SemiMethod):
    name = "toy"
    defaults = {"threshold": 0.95, "weight": 0.5}


@pytest.fixture
def toy_registered(monkeypatch):
    monkeypatch.setitem(semi_methods._METHODS, "toy", f"{__name__}:_Toy")


def test_options_merge_defaults_and_reject_unknown_keys():
    assert _Toy({"weight": 2.0}).options == {"threshold": 0.95, "weight": 2.0}
    assert _Toy().options == {"threshold": 0.95, "weight": 0.5}
    with pytest.raises(ConfigError) as e:
        _Toy({"thresh": 0.9})
    assert str(e.value) == ("--semi_options: unknown option 'thresh' for method 'toy'. "
                            "Valid options: threshold, weight")


def test_registry_builds_by_name_and_lists_valid_names(toy_registered):
    method = semi_methods.build_method("toy", {"threshold": 0.5})
    assert isinstance(method, _Toy) and method.options["threshold"] == 0.5
    assert "toy" in semi_methods.names()
    with pytest.raises(ConfigError, match=r"^--semi=nope: unknown method\. Valid methods: "
                       r"none, .*toy"):
        semi_methods.method_class("nope")


def test_semi_flags_are_checked(toy_registered):
    base = dict(model="demo_tiny")
    with pytest.raises(ConfigError, match=r"^--labeled_fraction given without --semi"):
        check_config(TrainConfig(labeled_fraction=0.25, **base))
    with pytest.raises(ConfigError, match=r"^--semi_options given without --semi"):
        check_config(TrainConfig(semi_options={"a": 1}, **base))
    with pytest.raises(ConfigError, match=r"^--labeled_split given without --semi"):
        check_config(TrainConfig(labeled_split="train_aug", **base))
    with pytest.raises(ConfigError, match=r"--labeled_fraction=1.5: must be in \(0, 1\)"):
        check_config(TrainConfig(semi="toy", labeled_fraction=1.5, **base))
    with pytest.raises(ConfigError, match="needs exactly one of --labeled_fraction and "
                       r"--labeled_list \(given: neither\)"):
        check_config(TrainConfig(semi="toy", **base))
    with pytest.raises(ConfigError, match=r"given: labeled_fraction, labeled_list"):
        check_config(TrainConfig(semi="toy", labeled_fraction=0.5, labeled_list="x", **base))
    with pytest.raises(ConfigError, match="unknown option 'x' for method 'toy'"):
        check_config(TrainConfig(semi="toy", semi_options={"x": 1}, labeled_fraction=0.5,
                                 **base))
    with pytest.raises(ConfigError, match="^--unlabeled_list needs --labeled_list$"):
        check_config(TrainConfig(semi="toy", labeled_fraction=0.5, unlabeled_list="u",
                                 **base))
    with pytest.raises(ConfigError, match=r"^--head_lr_multiplier=0.0: must be positive$"):
        check_config(TrainConfig(head_lr_multiplier=0.0, **base))
    check_config(TrainConfig(semi="toy", labeled_fraction=0.25, **base))  # fine


class _Linear(tf.keras.Model):
    def call(self, x, training=None):
        return x * (2.0 if training else 3.0)


def test_context_teacher_is_the_detached_inference_student_without_an_ema_model():
    ctx = SemiContext(_Linear(), normalization="minus_one_to_one", num_classes=3,
                      ignore_label=255, step=tf.constant(0, tf.int64), total_steps=10)
    x = tf.constant(np.arange(6, dtype=np.float32).reshape(1, 1, 2, 3))
    np.testing.assert_allclose(ctx.normalize(x), x.numpy() / 127.5 - 1.0, rtol=1e-6)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        eval_out, teacher_out, train_out = ctx.student_eval(x), ctx.teacher(x), ctx.student(x)
    np.testing.assert_array_equal(teacher_out, 3.0 * x.numpy())
    np.testing.assert_array_equal(eval_out, teacher_out)
    np.testing.assert_array_equal(train_out, 2.0 * x.numpy())
    assert tape.gradient(teacher_out, x) is None and tape.gradient(eval_out, x) is None
    assert tape.gradient(train_out, x) is not None
    with pytest.raises(ValueError, match="no peer network"):
        ctx.peer(x)
