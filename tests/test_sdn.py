"""The SDN neck (iseg.layers.sdn): the unit against a NumPy loop, the neck's guidance
wiring, `SegmentationModel(neck="sdn")` round trips and the --neck flags."""

import keras
import numpy as np
import pytest

from iseg.cli.flags import parse_options
from iseg.layers.sdn import (DiagonalDifference, SemanticDiffusionNeck, SemanticDifferenceFusion,
                             check_neck_options)
from iseg.models import SegmentationModel, build_model_from_name
from iseg.ops import resize


def _conv(x, kernel, depthwise=False):
    """'same' stride-1 convolution of [H, W, Cin] by [k, k, Cin, Cout] (depthwise:
    [k, k, C, 1]), as an explicit loop."""
    k = kernel.shape[0]
    p = k // 2
    xp = np.pad(x, ((p, p), (p, p), (0, 0)))
    h, w, cin = x.shape
    cout = cin if depthwise else kernel.shape[-1]
    out = np.zeros((h, w, cout))
    for i in range(h):
        for j in range(w):
            patch = xp[i:i + k, j:j + k]
            if depthwise:
                out[i, j] = (patch * kernel[..., 0]).sum(axis=(0, 1))
            else:
                for o in range(cout):
                    out[i, j, o] = (patch * kernel[..., o]).sum()
    return out


def _bn(x, bn):
    gamma, beta, mean, var = (np.asarray(w) for w in bn.weights)
    return gamma * (x - mean) / np.sqrt(var + bn.epsilon) + beta


def _randomize(layer, seed=1):
    rng = np.random.default_rng(seed)
    for w in layer.weights:
        if "variance" in w.path:
            w.assign(rng.uniform(0.5, 1.5, tuple(w.shape)).astype("float32"))
        else:
            w.assign(rng.normal(0, 0.4, tuple(w.shape)).astype("float32"))


def _oracle(unit, x, g, power=2):
    out = []
    for xb, gb in zip(x, g):
        g2 = _bn(_conv(gb, np.asarray(unit.guide.conv.kernel)), unit.guide.bn)
        d_x = _conv(xb, np.asarray(unit.diff_x.kernel), depthwise=True)
        d_g = _conv(g2, np.asarray(unit.diff_g.kernel), depthwise=True)
        sdc = _conv(d_x * d_g**power, np.asarray(unit.sdc.conv.kernel))
        out.append(xb + np.maximum(_bn(sdc, unit.sdc.bn), 0))
    return np.stack(out)


@pytest.mark.parametrize("power", [2, 1])
def test_unit_matches_numpy_loop(power):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 5, 6, 3)).astype("float32")
    g = rng.normal(size=(2, 5, 6, 4)).astype("float32")  # other width: projected to 3
    unit = SemanticDifferenceFusion(guidance_power=power)
    unit(x, g)
    _randomize(unit)
    got = np.asarray(unit(x, g, training=False))
    np.testing.assert_allclose(got, _oracle(unit, x, g, power), rtol=1e-4, atol=1e-4)


def test_diagonal_difference_init_and_trainability():
    kernel = np.asarray(DiagonalDifference(seed=3)((3, 3, 4, 1)))
    for corner, value in (((0, 0), -1), ((0, 2), 1), ((2, 0), 1), ((2, 2), -1)):
        np.testing.assert_array_equal(kernel[corner], value)
    assert np.abs(kernel[1]).sum() > 0 and len(np.unique(kernel[1, 1])) == 4  # random rest
    x = np.zeros((1, 4, 4, 2), "float32")
    # guide conv + BN (3), sdc conv + BN (3), and the two difference kernels when trainable
    for trainable, count in ((True, 8), (False, 6)):
        unit = SemanticDifferenceFusion(trainable_difference=trainable)
        unit(x, x)
        assert len(unit.trainable_weights) == count
        assert any(w is unit.diff_x.kernel for w in unit.trainable_weights) == trainable


def _endpoints(seed=0):
    rng = np.random.default_rng(seed)
    shapes = {"stem": (16, 3), "c2": (8, 4), "c3": (4, 5), "c4": (4, 6), "c5": (4, 7)}
    return {k: rng.normal(size=(1, s, s, c)).astype("float32") for k, (s, c) in shapes.items()}


@pytest.mark.parametrize("guidance", ["deeper", "self"])
def test_neck_guidance_wiring(guidance):
    eps = _endpoints()
    neck = SemanticDiffusionNeck(["c5", "c2"], guidance=guidance)
    neck(eps)
    _randomize(neck)
    out = neck(eps, training=False)
    for key in ("stem", "c3", "c4"):  # not read by the head: unchanged
        np.testing.assert_array_equal(np.asarray(out[key]), eps[key])
    guide_c2 = resize(eps["c3"], (8, 8)) if guidance == "deeper" else eps["c2"]
    for key, g in (("c2", guide_c2), ("c5", eps["c5"])):  # the deepest guides itself
        want = neck.units[key](eps[key], g, training=False)
        np.testing.assert_allclose(np.asarray(out[key]), np.asarray(want), atol=1e-6)
        assert np.abs(np.asarray(out[key]) - eps[key]).max() > 1e-3


def _model(**kw):
    keras.utils.set_random_seed(0)
    return build_model_from_name(
        "demo_tiny", 3, head_options=dict(dropout=0.0), neck="sdn", input_shape=(32, 32, 3),
        **kw)


def test_model_neck_round_trip_and_training_step(tmp_path):
    model = _model(neck_options=dict(guidance_power=1))
    assert model.neck.keys == ["c5", "c2"] and model.get_config()["neck"] == "sdn"
    _randomize(model.neck)
    x = np.random.default_rng(0).uniform(-1, 1, (2, 32, 32, 3)).astype("float32")
    raw, enc = model.backbone(x), model.encode(x)
    assert np.abs(np.asarray(enc["c2"]) - np.asarray(raw["c2"])).max() > 1e-3
    np.testing.assert_array_equal(np.asarray(enc["c3"]), np.asarray(raw["c3"]))
    path = tmp_path / "sdn.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    for key in ("neck", "neck_options"):
        assert loaded.get_config()[key] == model.get_config()[key]
    assert loaded.neck.get_config() == model.neck.get_config()
    assert loaded.neck.units["c2"].guidance_power == 1
    np.testing.assert_allclose(np.asarray(loaded(x)), np.asarray(model(x)), atol=1e-5)
    y = np.random.default_rng(1).integers(0, 3, (2, 32, 32)).astype("int32")
    before = [np.asarray(w).copy() for w in model.neck.trainable_weights]
    model.compile(optimizer=keras.optimizers.SGD(0.1))
    model.fit(x, y, batch_size=2, epochs=1, verbose=0)
    assert all(not np.allclose(b, np.asarray(w))
               for b, w in zip(before, model.neck.trainable_weights))


def test_bad_neck_settings_are_reported():
    from test_model import ToyHead, toy_backbone

    def make(**kw):
        return SegmentationModel(toy_backbone(), ToyHead(3), num_classes=3, **kw)

    with pytest.raises(ValueError, match="unknown neck 'fpn'. Valid necks: none, sdn"):
        make(neck="fpn")
    with pytest.raises(ValueError, match="neck_options {'guidance': 'self'} given without"):
        make(neck_options=dict(guidance="self"))
    with pytest.raises(ValueError, match=r"unknown sdn option\(s\) power; valid: keys, guidance"):
        make(neck="sdn", neck_options=dict(power=2))
    with pytest.raises(ValueError, match="sdn: guidance must be one of deeper, self, got 'up'"):
        make(neck="sdn", neck_options=dict(guidance="up", keys=["c5"]))
    with pytest.raises(ValueError, match="ToyHead does not declare the endpoints"):
        make(neck="sdn")


def test_neck_flags():
    from iseg.errors import ConfigError
    from iseg.training.config import TrainConfig, dataset_meta, model_options

    meta = dataset_meta(TrainConfig(dataset="shapes"))
    opts = model_options(TrainConfig(neck="sdn", neck_options={"guidance": "self"}), meta)
    assert opts["neck"] == "sdn" and opts["neck_options"] == {"guidance": "self"}
    assert "neck" not in model_options(TrainConfig(), meta)
    with pytest.raises(ConfigError, match=r"--neck_options: unknown sdn option\(s\) gain"):
        model_options(TrainConfig(neck="sdn", neck_options={"gain": 1}), meta)
    with pytest.raises(ConfigError, match="--neck_options given without --neck=sdn"):
        model_options(TrainConfig(neck_options={"guidance": "self"}), meta)
    with pytest.raises(ConfigError) as e:
        model_options(TrainConfig(neck="sdn", neck_options=parse_options("guidance=up",
                                                                          "neck_options")), meta)
    assert str(e.value) == "--neck_options: sdn: guidance must be one of deeper, self, got 'up'"


@pytest.mark.parametrize("options, message", [
    (dict(guidance="up"), "guidance must be one of deeper, self, got 'up'"),
    (dict(keys="c5"), "keys must be a list of endpoint names, got 'c5'"),
    (dict(align_corners="yes"), "align_corners must be True or False, got 'yes'"),
    (dict(trainable_difference=1), "trainable_difference must be True or False, got 1"),
    (dict(sdc_kernel_size=0), "sdc_kernel_size must be a positive integer, got 0"),
    (dict(sdc_kernel_size=2.5), "sdc_kernel_size must be a positive integer, got 2.5"),
    (dict(guidance_power="two"), "guidance_power must be a number, got 'two'"),
    (dict(bn_epsilon=True), "bn_epsilon must be a number, got True"),
    (dict(difference_init="nope"), "difference_init must be an initializer name, got 'nope'"),
])
def test_bad_neck_option_values_are_named(options, message):
    with pytest.raises(ValueError) as e:
        check_neck_options(options)
    assert str(e.value) == f"sdn: {message}"
    good = dict(keys=["c2", "c5"], guidance="self", align_corners=False, guidance_power=1,
                sdc_kernel_size=5, difference_init="he_normal", bn_momentum=0.9)
    assert check_neck_options(good) == good


def test_exported_saved_model_holds_the_neck(tmp_path):
    import tensorflow as tf

    from iseg.datasets.pipeline import normalize
    from iseg.export import export_saved_model

    keras.utils.set_random_seed(0)
    model = build_model_from_name(
        "fcn_resnet18", 3, aux_weight=0, neck="sdn", input_shape=(32, 32, 3),
        backbone_options=dict(depths=(1, 1, 1, 1), widths=(4, 4, 8, 8), stem_width=8),
        head_options=dict(channels=8, end_channels=8))
    _randomize(model.neck)
    path = export_saved_model(model, str(tmp_path / "export"))
    images = np.random.default_rng(0).integers(0, 256, (1, 21, 26, 3), dtype=np.uint8)
    got = tf.saved_model.load(path).signatures["serve_images"](images=tf.constant(images))
    want = tf.nn.softmax(model(normalize(images, model.normalization), training=False))
    np.testing.assert_allclose(got["probabilities"].numpy(), want.numpy(), atol=1e-5)
