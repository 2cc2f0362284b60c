"""HRNetV2 backbone: shapes, the HRNetV2 concat, timm weight layout, parity with timm."""

import numpy as np
import pytest

import keras


from iseg.backbones import build_backbone
from iseg.backbones.hrnet import HRFuse
from iseg.backbones.resnet import ResNetBlock
from iseg.backbones.safetensors import write_safetensors
from iseg.ops import resize
from test_backbones_weights import _random_model

TINY = dict(widths=(2, 3, 4, 5), modules=(1, 2, 1), blocks=1, stage1_width=4)


def test_hrnet_endpoints_and_concat(tmp_path):
    x = np.random.default_rng(0).normal(size=(1, 64, 48, 3)).astype("float32")
    branches = _random_model("hrnetv2_w18", concat_branches=False, stem_width=8, **TINY)
    hrnet = build_backbone("hrnetv2_w18", stem_width=8, **TINY)
    hrnet.set_weights(branches.get_weights())  # the concat adds no weights
    a, b = branches(x), hrnet(x)
    shapes = {k: tuple(v.shape) for k, v in a.items()}
    assert shapes == {
        "stem": (1, 32, 24, 8), "c2": (1, 16, 12, 2), "c3": (1, 8, 6, 3),
        "c4": (1, 4, 3, 4), "c5": (1, 2, 2, 5),
    }
    want = np.concatenate(
        [np.asarray(resize(a[k], (16, 12), align_corners=False)) for k in ("c2", "c3", "c4", "c5")],
        axis=-1,
    )
    np.testing.assert_allclose(np.asarray(b["c5"]), want, atol=1e-5)
    assert hrnet.endpoint_channels["c5"] == 14
    for key in ("stem", "c2", "c3", "c4"):
        np.testing.assert_array_equal(np.asarray(a[key]), np.asarray(b[key]))
    hrnet.save(tmp_path / "hrnet.keras")
    back = keras.saving.load_model(tmp_path / "hrnet.keras")
    np.testing.assert_array_equal(np.asarray(back(x)["c5"]), np.asarray(b["c5"]))


def test_hrnet_fuse_matches_numpy():
    # branch 1 of three: from 0 (one 3x3/2 ConvBN), identity, from 2 (1x1 ConvBN + 2x nearest)
    fuse = HRFuse(1, (2, 3, 4), bn_epsilon=1e-3)
    shapes = [(1, 8, 8, 2), (1, 4, 4, 3), (1, 2, 2, 4)]
    fuse.build(shapes)
    rng = np.random.default_rng(1)
    fuse.set_weights([rng.uniform(0.5, 1.5, w.shape) for w in fuse.get_weights()])
    xs = [rng.normal(size=s).astype("float32") for s in shapes]
    got = np.asarray(fuse(xs))

    def conv_bn(x, chain, stride):
        k = np.asarray(chain.convs[0].kernel)
        g, beta, m, v = (np.asarray(w) for w in chain.bns[0].weights)
        kh = k.shape[0]
        xp = np.pad(x, ((0, 0), (kh // 2, kh // 2), (kh // 2, kh // 2), (0, 0)))
        h = (x.shape[1] - 1) // stride + 1
        out = np.zeros((1, h, h, k.shape[-1]))
        for i in range(h):
            for j in range(h):
                patch = xp[:, i * stride : i * stride + kh, j * stride : j * stride + kh]
                out[:, i, j] = np.einsum("nabc,abcd->nd", patch, k)
        return (out - m) / np.sqrt(v + 1e-3) * g + beta

    low = conv_bn(xs[0], fuse.paths[0], 2)
    high = conv_bn(xs[2], fuse.paths[2], 1).repeat(2, axis=1).repeat(2, axis=2)
    np.testing.assert_allclose(got, np.maximum(low + xs[1] + high, 0), atol=1e-4)


def _torch_conv(kernel):
    return np.transpose(np.asarray(kernel), (3, 2, 0, 1))


def _put_bn(sd, prefix, bn):
    g, b, m, v = (np.asarray(w) for w in bn.weights)
    sd.update({prefix + "weight": g, prefix + "bias": b, prefix + "running_mean": m,
               prefix + "running_var": v, prefix + "num_batches_tracked": np.array(1, "int64")})


def _put_chain(sd, chain, prefixes):
    for conv, bn, p in zip(chain.convs, chain.bns, prefixes):
        sd[p + "0.weight"] = _torch_conv(conv.kernel)
        _put_bn(sd, p + "1.", bn)


def _put_block(sd, block, p):
    for i, (conv, bn) in enumerate(zip(block.convs, block.bns)):
        sd[f"{p}conv{i + 1}.weight"] = _torch_conv(conv.kernel)
        _put_bn(sd, f"{p}bn{i + 1}.", bn)
    if block.shortcut_conv is not None:
        sd[p + "downsample.0.weight"] = _torch_conv(block.shortcut_conv.kernel)
        _put_bn(sd, p + "downsample.1.", block.shortcut_bn)


def _timm_hrnet(model):
    """Export in timm's `hrnet_w*` state-dict layout (written from timm's module tree)."""
    sd = {}
    for k in (1, 2):
        chain = model.get_layer(f"stem{k}")
        sd[f"conv{k}.weight"] = _torch_conv(chain.convs[0].kernel)
        _put_bn(sd, f"bn{k}.", chain.bns[0])
    for layer in model.layers:
        parts = layer.name.split("_")
        if isinstance(layer, ResNetBlock) and parts[0] == "layer1":
            _put_block(sd, layer, f"layer1.{int(parts[1][5:]) - 1}.")
        elif isinstance(layer, ResNetBlock):
            s, m, b, k = int(parts[0][5:]), int(parts[1][6:]), int(parts[2][6:]), int(parts[3][5:])
            _put_block(sd, layer, f"stage{s}.{m - 1}.branches.{b}.{k - 1}.")
        elif parts[0].startswith("transition"):
            new = layer.specs[0][2] == 2
            _put_chain(sd, layer, [f"{parts[0]}.{parts[1]}.{'0.' if new else ''}"])
        elif isinstance(layer, HRFuse):
            s, m = int(parts[0][5:]), int(parts[1][6:])
            for j, path in layer.paths.items():
                p = f"stage{s}.{m - 1}.fuse_layers.{layer.index}.{j}."
                steps = [p] if j > layer.index else [f"{p}{q}." for q in range(len(path.convs))]
                _put_chain(sd, path, steps)
    sd["final_layer.0.weight"] = np.zeros((3, 2, 1, 1), "float32")
    sd["classifier.weight"] = np.zeros((10, 3), "float32")
    return sd


def test_timm_hrnet_layout_round_trip(tmp_path):
    src = _random_model("hrnetv2_w18", stem_width=6, bn_epsilon=1e-5, **TINY)
    sd = _timm_hrnet(src)
    write_safetensors(tmp_path / "hrnet.safetensors", sd)
    # the file fixes the stem width
    model = build_backbone("hrnetv2_w18", weights=tmp_path / "hrnet.safetensors", **TINY)
    assert model.get_layer("stem1").specs[0][0] == 6
    x = np.random.default_rng(6).normal(size=(1, 32, 32, 3)).astype("float32")
    a, b = src(x), model(x)
    for key in a:
        np.testing.assert_allclose(np.asarray(a[key]), np.asarray(b[key]), rtol=1e-5, atol=1e-5)
    extra = {**sd, "stage5.0.x.weight": sd["conv1.weight"]}
    write_safetensors(tmp_path / "extra.safetensors", extra)
    with pytest.raises(ValueError, match="no place in backbone.*stage5.0.x.weight"):
        build_backbone("hrnetv2_w18", weights=tmp_path / "extra.safetensors", **TINY)
    with pytest.raises(ValueError, match="hrnet_w18"):
        build_backbone("hrnetv2_w18", weights="imagenet")


def test_hrnet_options_and_parameter_count():
    with pytest.raises(ValueError, match="output_stride 32 only"):
        build_backbone("hrnetv2_w18", output_stride=8, **TINY)
    # drop_path_rate is a common option without meaning here: ignored
    build_backbone("hrnetv2_w18", drop_path_rate=0.1, **TINY)
    # timm hrnet_w18: 21,299,004 parameters, 11,736,744 of them in the classification head
    model = build_backbone("hrnetv2_w18")
    assert sum(int(np.prod(w.shape)) for w in model.trainable_weights) == 21299004 - 11736744


@pytest.mark.slow
def test_hrnet_w48_parameter_count():
    # timm hrnet_w48: 77,469,864 parameters, 12,144,744 in the classification head
    model = build_backbone("hrnetv2_w48")
    assert sum(int(np.prod(w.shape)) for w in model.trainable_weights) == 77469864 - 12144744


def test_hrnet_against_timm(tmp_path):
    torch = pytest.importorskip("torch")
    timm = pytest.importorskip("timm")
    ref = timm.create_model("hrnet_w18", pretrained=False).eval()
    with torch.no_grad():
        for name, buf in ref.named_buffers():
            if name.endswith("running_var"):
                buf.uniform_(0.5, 1.5)
            elif name.endswith("running_mean"):
                buf.normal_(0, 0.1)
    state = {k: v.detach().cpu().numpy() for k, v in ref.state_dict().items()}
    write_safetensors(tmp_path / "timm.safetensors", state)
    model = build_backbone("hrnetv2_w18", weights=tmp_path / "timm.safetensors",
                           concat_branches=False)
    x = np.random.default_rng(0).normal(size=(1, 64, 96, 3)).astype("float32")
    with torch.no_grad():
        t = torch.from_numpy(x.transpose(0, 3, 1, 2))
        t = ref.act2(ref.bn2(ref.conv2(ref.act1(ref.bn1(ref.conv1(t))))))
        want = [y.numpy().transpose(0, 2, 3, 1) for y in ref.stages(t)]
    got = model(x)
    for key, w in zip(("c2", "c3", "c4", "c5"), want):
        g = np.asarray(got[key])
        assert g.shape == w.shape
        assert float(np.abs(w - g).max() / np.abs(w).max()) <= 1e-4, key
