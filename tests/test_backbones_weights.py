"""Weight import: safetensors reader, keras.applications parity, timm layouts, errors,
parameter counts."""

import json
import struct

import numpy as np
import pytest

import keras

from iseg.backbones import (
    ConvNeXtBlock,
    ConvNeXtDownsample,
    PatchMerging,
    ResNetBlock,
    SwinBlock,
    build_backbone,
)
from iseg.backbones.safetensors import read_safetensors, write_safetensors

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], "float32")
IMAGENET_STD = np.array([0.229, 0.224, 0.225], "float32")


# ----------------------------------------------------------------------- safetensors


def test_safetensors_round_trip_and_bf16(tmp_path):
    rng = np.random.default_rng(0)
    tensors = {
        "a.weight": rng.normal(size=(3, 4, 2, 2)).astype("float32"),
        "b": rng.normal(size=(5,)).astype("float16"),
        "n": np.array(7, dtype="int64"),
        "m": rng.integers(0, 255, size=(2, 3)).astype("uint8"),
    }
    write_safetensors(tmp_path / "t.safetensors", tensors, metadata={"format": "pt"})
    back = read_safetensors(tmp_path / "t.safetensors")
    assert set(back) == set(tensors)
    for k, v in tensors.items():
        assert back[k].dtype == v.dtype and back[k].shape == v.shape
        np.testing.assert_array_equal(back[k], v)

    # bfloat16 written by hand: the upper 16 bits of float32
    values = np.array([1.5, -2.25, 3.0e-3, 1024.0], "float32")
    raw = (values.view(np.uint32) >> 16).astype("<u2").tobytes()
    header = json.dumps({"x": {"dtype": "BF16", "shape": [2, 2], "data_offsets": [0, 8]}})
    blob = header.encode() + b" " * (-len(header) % 8)
    (tmp_path / "bf.safetensors").write_bytes(struct.pack("<Q", len(blob)) + blob + raw)
    x = read_safetensors(tmp_path / "bf.safetensors")["x"]
    expected = (values.view(np.uint32) & 0xFFFF0000).view(np.float32).reshape(2, 2)
    np.testing.assert_array_equal(x, expected)


def test_safetensors_truncated_file_is_an_error(tmp_path):
    write_safetensors(tmp_path / "t.safetensors", {"w": np.ones((100,), "float32")})
    data = (tmp_path / "t.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[:-40])
    with pytest.raises(ValueError, match="outside the file"):
        read_safetensors(tmp_path / "cut.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"\x04\x00\x00\x00\x00\x00\x00\x00nope")
    with pytest.raises(ValueError, match="not a safetensors file"):
        read_safetensors(tmp_path / "bad.safetensors")


# --------------------------------------------------------- keras.applications parity


def _randomize_norms(model, rng):
    """Non-trivial BN statistics / LN affine / layer scale so that a mapping error shows."""
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            g, b, m, v = layer.get_weights()
            layer.set_weights([
                rng.uniform(0.5, 1.5, g.shape), rng.normal(0, 0.1, b.shape),
                rng.normal(0, 0.1, m.shape), rng.uniform(0.5, 1.5, v.shape),
            ])
        elif isinstance(layer, keras.layers.LayerNormalization) or "layer_scale" in layer.name:
            layer.set_weights([rng.uniform(0.5, 1.5, w.shape) for w in layer.get_weights()])
        elif isinstance(layer, keras.Sequential):
            _randomize_norms(layer, rng)


def _rel_err(want, got):
    return float(np.abs(want - got).max() / np.abs(want).max())


@pytest.mark.slow
def test_resnet50_equals_keras_applications(tmp_path):
    rng = np.random.default_rng(0)
    ref = keras.applications.ResNet50(weights=None, include_top=False, input_shape=(64, 64, 3))
    _randomize_norms(ref, rng)
    ref.save_weights(tmp_path / "resnet50.weights.h5")
    model = build_backbone("resnet50", weights=tmp_path / "resnet50.weights.h5")
    # keras.applications ResNet takes caffe-preprocessed BGR; ours the "imagenet" input
    x255 = rng.uniform(0, 255, size=(2, 64, 64, 3)).astype("float32")
    want = np.asarray(ref(keras.applications.resnet.preprocess_input(x255.copy())))
    got = np.asarray(model((x255 / 255.0 - IMAGENET_MEAN) / IMAGENET_STD)["c5"])
    assert got.shape == want.shape
    assert _rel_err(want, got) <= 1e-4
    # parameter counts (keras convention: BN statistics included)
    assert model.count_params() == ref.count_params() == 23_587_712


def test_caffe_input_matches_keras_preprocess_input():
    from iseg.backbones.resnet import CaffeInput

    x255 = np.random.default_rng(4).uniform(0, 255, size=(2, 5, 7, 3)).astype("float32")
    want = keras.applications.resnet.preprocess_input(x255.copy())
    got = np.asarray(CaffeInput()((x255 / 255.0 - IMAGENET_MEAN) / IMAGENET_STD))
    np.testing.assert_allclose(got, want, atol=1e-3)


@pytest.mark.slow
def test_convnext_tiny_equals_keras_applications_legacy_h5(tmp_path):
    rng = np.random.default_rng(1)
    ref = keras.applications.ConvNeXtTiny(
        weights=None, include_top=False, input_shape=(64, 64, 3)
    )
    _randomize_norms(ref, rng)
    ref.save(tmp_path / "convnext_tiny.h5")  # legacy HDF5 layout (model_weights group)
    model = build_backbone("convnext_tiny", weights=tmp_path / "convnext_tiny.h5")
    x255 = rng.uniform(0, 255, size=(2, 64, 64, 3)).astype("float32")
    want = np.asarray(ref(x255))  # keras.applications normalises internally
    got = np.asarray(model((x255 / 255.0 - IMAGENET_MEAN) / IMAGENET_STD)["c5"])
    assert got.shape == want.shape
    assert _rel_err(want, got) <= 1e-4
    assert model.count_params() == ref.count_params() == 27_820_128


def test_swin_tiny_parameter_count_matches_timm_without_head():
    # timm swin_tiny_patch4_window7_224: 28,288,354 parameters, head 768 * 1000 + 1000
    model = build_backbone("swin_tiny")
    assert model.count_params() == 28_288_354 - 769_000


# ------------------------------------------------------------------- timm layouts


def _torch_conv(kernel):
    return np.transpose(kernel, (3, 2, 0, 1))


def _bn(sd, prefix, layer):
    g, b, m, v = (np.asarray(w) for w in layer.weights)
    sd.update({
        prefix + "weight": g, prefix + "bias": b, prefix + "running_mean": m,
        prefix + "running_var": v, prefix + "num_batches_tracked": np.array(3, "int64"),
    })


def _ln(sd, prefix, layer):
    sd[prefix + "weight"] = np.asarray(layer.gamma)
    sd[prefix + "bias"] = np.asarray(layer.beta)


def _dense(sd, prefix, layer):
    sd[prefix + "weight"] = np.asarray(layer.kernel).T
    if layer.use_bias:
        sd[prefix + "bias"] = np.asarray(layer.bias)


def _conv(sd, prefix, layer):
    sd[prefix + "weight"] = _torch_conv(np.asarray(layer.kernel))
    if layer.use_bias:
        sd[prefix + "bias"] = np.asarray(layer.bias)


def _timm_resnet(model):
    """Export in timm's ResNet state-dict layout (conv1/bn1 or conv1.{0,1,3,4,6}, layerN.i)."""
    sd = {}
    stem = model.get_layer("stem")
    if stem.stem == "v1":
        _conv(sd, "conv1.", stem.convs[0])
        _bn(sd, "bn1.", stem.bns[0])
    else:
        for conv, bn, c, b in zip(
            stem.convs, stem.bns, (0, 3, 6), ("conv1.1.", "conv1.4.", "bn1.")
        ):
            _conv(sd, f"conv1.{c}.", conv)
            _bn(sd, b, bn)
    for layer in model.layers:
        if isinstance(layer, ResNetBlock):
            stage, j = layer.name[4:].split("_block")
            p = f"layer{int(stage) - 1}.{int(j) - 1}."
            for i, (conv, bn) in enumerate(zip(layer.convs, layer.bns)):
                _conv(sd, f"{p}conv{i + 1}.", conv)
                _bn(sd, f"{p}bn{i + 1}.", bn)
            if layer.shortcut_conv is not None:
                k = 0 if layer.shortcut == "conv" else 1
                _conv(sd, f"{p}downsample.{k}.", layer.shortcut_conv)
                _bn(sd, f"{p}downsample.{k + 1}.", layer.shortcut_bn)
    sd["fc.weight"] = np.zeros((10, 4), "float32")
    sd["fc.bias"] = np.zeros((10,), "float32")
    return sd


def _timm_convnext(model):
    sd = {}
    stem = model.get_layer("stem")
    _conv(sd, "stem.0.", stem.conv)
    _ln(sd, "stem.1.", stem.norm)
    for layer in model.layers:
        if isinstance(layer, ConvNeXtDownsample) and not layer.stem:
            i = int(layer.name[-1])
            _ln(sd, f"stages.{i}.downsample.0.", layer.norm)
            _conv(sd, f"stages.{i}.downsample.1.", layer.conv)
        if isinstance(layer, ConvNeXtBlock):
            stage, j = layer.name[5:].split("_block")
            p = f"stages.{int(stage) - 1}.blocks.{int(j) - 1}."
            sd[p + "conv_dw.weight"] = np.transpose(np.asarray(layer.dwconv.kernel), (2, 3, 0, 1))
            sd[p + "conv_dw.bias"] = np.asarray(layer.dwconv.bias)
            _ln(sd, p + "norm.", layer.norm)
            _dense(sd, p + "mlp.fc1.", layer.fc1)
            _dense(sd, p + "mlp.fc2.", layer.fc2)
            sd[p + "gamma"] = np.asarray(layer.gamma)
    _ln(sd, "head.norm.", model.get_layer("norm"))
    sd["head.fc.weight"] = np.zeros((10, 16), "float32")
    return sd


def _timm_swin(model, old_layout=False):
    sd = {}
    embed = model.get_layer("patch_embed")
    _conv(sd, "patch_embed.proj.", embed.proj)
    _ln(sd, "patch_embed.norm.", embed.norm)
    for layer in model.layers:
        if isinstance(layer, PatchMerging):
            i = int(layer.name[-1])
            p = f"layers.{i - 1 if old_layout else i}.downsample."
            _ln(sd, p + "norm.", layer.norm)
            _dense(sd, p + "reduction.", layer.reduction)
        if isinstance(layer, SwinBlock):
            stage, j = layer.name[5:].split("_block")
            p = f"layers.{int(stage) - 1}.blocks.{int(j) - 1}."
            _ln(sd, p + "norm1.", layer.norm1)
            _dense(sd, p + "attn.qkv.", layer.qkv)
            _dense(sd, p + "attn.proj.", layer.proj)
            sd[p + "attn.relative_position_bias_table"] = np.asarray(
                layer.relative_position_bias_table
            )
            sd[p + "attn.relative_position_index"] = np.zeros((49, 49), "int64")
            _ln(sd, p + "norm2.", layer.norm2)
            _dense(sd, p + "mlp.fc1.", layer.fc1)
            _dense(sd, p + "mlp.fc2.", layer.fc2)
    _ln(sd, "norm.", model.get_layer("norm"))
    sd["head.fc.weight"] = np.zeros((10, 32), "float32")
    return sd


def _random_model(name, **kw):
    keras.utils.set_random_seed(5)
    model = build_backbone(name, **kw)
    rng = np.random.default_rng(5)
    for v in model.weights:
        if "moving_variance" in v.path or "gamma" in v.path:
            v.assign(rng.uniform(0.5, 1.5, v.shape).astype("float32"))
        else:
            v.assign(rng.normal(0, 0.2, v.shape).astype("float32"))
    return model


def _check_round_trip(tmp_path, name, src, sd, **kw):
    write_safetensors(tmp_path / "m.safetensors", sd)
    model = build_backbone(name, weights=tmp_path / "m.safetensors", **kw)
    x = np.random.default_rng(6).normal(size=(1, 33, 33, 3)).astype("float32")
    a, b = src(x), model(x)
    for key in a:
        np.testing.assert_allclose(np.asarray(a[key]), np.asarray(b[key]), rtol=1e-5, atol=1e-5)
    return model


def test_timm_resnet_v1_layout(tmp_path):
    tiny = dict(depths=(1, 2, 1, 2), widths=(4, 4, 8, 8))
    src = _random_model("resnet18", stem_width=8, bn_epsilon=1e-5, **tiny)
    # the file fixes the stem width; the name's defaults do the rest
    _check_round_trip(tmp_path, "resnet18", src, _timm_resnet(src), **tiny)


def test_timm_resnet_deep_stem_avg_down_layout(tmp_path):
    # a timm "resnet50d"-style file: deep stem (w, w, 2w) and avg-pool + conv shortcuts
    tiny = dict(depths=(2, 2, 2, 2), widths=(4, 4, 8, 8))
    src = _random_model(
        "resnet50_d8", stem_width=6, stride_in="first", avg_down=True, bn_epsilon=1e-5, **tiny
    )
    model = _check_round_trip(tmp_path, "resnet50_d8", src, _timm_resnet(src), **tiny)
    assert model.get_layer("stem").stem_width == 6
    assert model.get_layer("conv3_block1").shortcut == "avg_conv"
    assert model.get_layer("conv3_block1").stride == 2  # "first" placement from the file


def test_timm_convnext_layout(tmp_path):
    tiny = dict(depths=(1, 2, 1, 1), widths=(8, 8, 16, 16))
    src = _random_model("convnext_tiny", **tiny)
    # fine-tuning setting: stochastic depth on (identity at inference)
    _check_round_trip(
        tmp_path, "convnext_tiny", src, _timm_convnext(src), drop_path_rate=0.2, **tiny
    )


@pytest.mark.parametrize("old_layout", [False, True])
def test_timm_swin_layouts(tmp_path, old_layout):
    tiny = dict(depths=(2, 2, 2, 2), embed_dim=4, num_heads=(1, 1, 2, 2))
    src = _random_model("swin_tiny", window_size=3, **tiny)
    # the window size comes from the relative position table of the file
    model = _check_round_trip(tmp_path, "swin_tiny", src, _timm_swin(src, old_layout), **tiny)
    assert model.get_layer("stage1_block1").window_size == 3
    if old_layout:
        return
    # segmentation variant: extra per-endpoint norms, new (identity) on top of the file
    normed = build_backbone(
        "swin_tiny", weights=tmp_path / "m.safetensors", out_norms=True, **tiny
    )
    x = np.random.default_rng(7).normal(size=(1, 32, 32, 3)).astype("float32")
    a, b = src(x), normed(x)
    np.testing.assert_allclose(np.asarray(a["c5"]), np.asarray(b["c5"]), atol=1e-5)
    raw = np.asarray(a["c3"])
    mu, var = raw.mean(-1, keepdims=True), raw.var(-1, keepdims=True)
    np.testing.assert_allclose((raw - mu) / np.sqrt(var + 1e-5), np.asarray(b["c3"]), atol=1e-4)


# ------------------------------------------------------------------------- errors


def test_weight_file_errors(tmp_path):
    tiny = dict(depths=(1, 1, 1, 1), widths=(4, 4, 4, 4), stem_width=4)
    with pytest.raises(FileNotFoundError, match="missing.safetensors.*--backbone_weights"):
        build_backbone("resnet18", weights=tmp_path / "missing.safetensors", **tiny)
    (tmp_path / "w.npz").write_bytes(b"x")
    with pytest.raises(ValueError, match="expected a keras.applications"):
        build_backbone("resnet18", weights=tmp_path / "w.npz", **tiny)

    src = _random_model("resnet18", bn_epsilon=1e-5, **tiny)
    sd = _timm_resnet(src)
    write_safetensors(
        tmp_path / "extra.safetensors", {**sd, "layer5.0.conv1.weight": sd["conv1.weight"]}
    )
    with pytest.raises(ValueError, match="no place in backbone.*layer5.0.conv1.weight"):
        build_backbone("resnet18", weights=tmp_path / "extra.safetensors", **tiny)
    write_safetensors(tmp_path / "ok.safetensors", sd)
    with pytest.raises(ValueError, match="shape mismatch"):
        build_backbone("resnet18", weights=tmp_path / "ok.safetensors",
                       depths=(1, 1, 1, 1), widths=(4, 4, 8, 8))
    with pytest.raises(ValueError, match="missing"):
        build_backbone("resnet18", weights=tmp_path / "ok.safetensors",
                       depths=(1, 1, 1, 2), widths=(4, 4, 4, 4))
    with pytest.raises(ValueError, match="keras.applications has no ResNet-18"):
        (tmp_path / "r18.h5").write_bytes(b"")
        build_backbone("resnet18", weights=tmp_path / "r18.h5", **tiny)


def test_imagenet_offline_message_names_file_and_flag(monkeypatch):
    def offline(*args, **kwargs):
        raise Exception("URL fetch failure: no network")

    monkeypatch.setattr(keras.applications, "ResNet101", offline)
    with pytest.raises(ValueError) as err:
        build_backbone("resnet101", weights="imagenet")
    message = str(err.value)
    assert "resnet101_weights_tf_dim_ordering_tf_kernels_notop.h5" in message
    assert "--backbone_weights" in message and "weights=PATH" in message
    with pytest.raises(ValueError, match="swin_tiny_patch4_window7_224"):
        build_backbone("swin_tiny", weights="imagenet")
    with pytest.raises(ValueError, match="resnet50d"):
        build_backbone("resnet50_d8", weights="imagenet")


# ----------------------------------------------------- against timm (when installed)


def _timm_file(tmp_path, ref, torch):
    with torch.no_grad():
        for name, buf in ref.named_buffers():
            if name.endswith("running_var"):
                buf.uniform_(0.5, 1.5)
            elif name.endswith("running_mean"):
                buf.normal_(0, 0.1)
        for name, p in ref.named_parameters():
            if name.endswith("gamma") or ".norm" in name or "bn" in name:
                p.uniform_(0.5, 1.5)
    state = {k: v.detach().cpu().numpy() for k, v in ref.state_dict().items()}
    write_safetensors(tmp_path / "timm.safetensors", state)
    return tmp_path / "timm.safetensors"


@pytest.mark.parametrize(
    "timm_name,name", [("resnet50d", "resnet50"), ("convnext_tiny", "convnext_tiny")]
)
def test_against_timm(tmp_path, timm_name, name):
    torch = pytest.importorskip("torch")
    timm = pytest.importorskip("timm")
    ref = timm.create_model(timm_name, pretrained=False).eval()
    path = _timm_file(tmp_path, ref, torch)
    model = build_backbone(name, weights=path)
    x = np.random.default_rng(0).normal(size=(1, 65, 65, 3)).astype("float32")
    with torch.no_grad():
        feats = ref.forward_features(torch.from_numpy(x.transpose(0, 3, 1, 2)))
        if name.startswith("convnext"):  # our c5 carries the head norm (channels last)
            feats = ref.head.norm(feats)
        want = feats.numpy().transpose(0, 2, 3, 1)
    got = np.asarray(model(x)["c5"])
    assert got.shape == want.shape
    assert _rel_err(want, got) <= 1e-4
