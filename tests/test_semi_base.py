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


@pytest.mark.parametrize("method, options, want", [
    ("cwbass", {"confidence_decay": "false", "ramp_steps": "none"},
     {"confidence_decay": False, "ramp_steps": None}),
    ("cwbass", {"confidence_decay": "True", "ramp_steps": 10.0, "gamma": 2},
     {"confidence_decay": True, "ramp_steps": 10, "gamma": 2.0}),
    ("corrmatch", {"corr_endpoint": "c4", "num_regions": "64", "thresh_init": "0.7"},
     {"corr_endpoint": "c4", "num_regions": 64, "thresh_init": 0.7}),
])
def test_option_values_take_the_type_of_their_default(method, options, want):
    got = semi_methods.build_method(method, options).options
    assert {k: got[k] for k in want} == want
    assert all(type(got[k]) is type(v) for k, v in want.items())


@pytest.mark.parametrize("method, options, message", [
    ("cwbass", {"confidence_decay": "maybe"}, "confidence_decay=maybe must be true or false"),
    ("cwbass", {"confidence_decay": 1}, "confidence_decay=1 must be true or false"),
    ("cwbass", {"ramp_steps": 2.5}, "ramp_steps=2.5 must be a whole number or none"),
    ("augseg", {"tau": "abc"}, "tau=abc must be a number"),
    ("augseg", {"weight": "nan"}, "weight=nan must be a number"),
    ("corrmatch", {"corr_endpoint": "c9"}, "corr_endpoint=c9 must be one of c2, c3, c4, c5"),
    ("corrmatch", {"num_regions": 12.5}, "num_regions=12.5 must be a whole number"),
])
def test_bad_option_values_are_one_line_errors(method, options, message):
    with pytest.raises(ConfigError) as e:
        semi_methods.build_method(method, options)
    assert str(e.value) == f"--semi_options: {message}"


def test_a_bad_option_value_is_reported_by_the_flag_checks():
    from iseg.cli.flags import parse_options

    options = parse_options("tau=abc", "semi_options")
    with pytest.raises(ConfigError) as e:
        check_config(TrainConfig(model="demo_tiny", semi="augseg", semi_options=options,
                                 labeled_fraction=0.5))
    assert str(e.value) == "--semi_options: tau=abc must be a number"


@pytest.mark.parametrize("name", ["unimatch", "corrmatch"])
def test_weight_decay_term_is_unscaled_and_covers_the_method_layers(name):
    from iseg.semi.engine import SemiEngine
    from iseg.training.config import DatasetMeta
    from semi_method_testutil import K, tiny_model, zipped_batch

    student = tiny_model(0)
    student.l2_weight_decay = 0.01
    meta = DatasetMeta(num_classes=K, class_names=list("abc"), palette=[(0, 0, 0)] * K)
    cfg = TrainConfig(model="demo_tiny", semi=name, labeled_fraction=0.25, steps=4,
                      semi_options={"corr_channels": 8} if name == "corrmatch" else {})
    engine = SemiEngine(cfg, meta, student, "minus_one_to_one")
    terms = engine.method.loss_terms(engine.context(tf.constant(0, tf.int64)),
                                     zipped_batch(0, streams=2), tf.constant([1, 2]))

    def squares(layers):
        return sum(float(np.sum(np.square(w.numpy(), dtype=np.float64)))
                   for layer in layers for w in layer.trainable_weights
                   if w.path.split("/")[-1] == "kernel")

    extra = squares(engine.method.trainable_layers())
    assert (extra > 0) == (name == "corrmatch")  # the correlation head's kernels
    np.testing.assert_allclose(float(terms["l2"]), 0.01 * (squares([student]) + extra),
                               rtol=1e-5)
