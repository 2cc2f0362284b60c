"""Swin: a NumPy loop oracle for one shifted-window block and patch merging; timm parity
when torch and timm are installed."""

import math

import numpy as np
import pytest


from iseg.backbones import PatchMerging, SwinBlock, build_backbone
from iseg.backbones.safetensors import write_safetensors


def _layer_norm(x, gamma, beta, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * gamma + beta


def _gelu(x):
    erf = np.vectorize(math.erf)
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _oracle_block(x, p, ws, shift, heads, eps):
    """Window attention written with explicit loops over windows, pixel pairs and heads.

    Masking is stated independently of the region-id construction: after the cyclic
    shift, two pixels of a window may attend to each other only if both or neither
    wrapped around the bottom edge, and both or neither wrapped around the right edge.
    """
    h, w, c = x.shape
    hd = c // heads
    y = _layer_norm(x, p["norm1_g"], p["norm1_b"], eps)
    hp, wp = -(-h // ws) * ws, -(-w // ws) * ws
    padded = np.zeros((hp, wp, c), dtype=np.float64)
    padded[:h, :w] = y
    shifted = np.zeros_like(padded)
    for i in range(hp):
        for j in range(wp):
            shifted[i, j] = padded[(i + shift) % hp, (j + shift) % wp]
    out = np.zeros_like(shifted)
    for wi in range(0, hp, ws):
        for wj in range(0, wp, ws):
            pos = [(wi + a, wj + b) for a in range(ws) for b in range(ws)]
            tokens = np.stack([shifted[i, j] for i, j in pos])
            qkv = tokens @ p["qkv_k"] + p["qkv_b"]
            q, k, v = qkv[:, :c], qkv[:, c : 2 * c], qkv[:, 2 * c :]
            n = len(pos)
            heads_out = []
            for hh in range(heads):
                sl = slice(hh * hd, (hh + 1) * hd)
                logits = np.zeros((n, n))
                for a in range(n):
                    for b in range(n):
                        (ia, ja), (ib, jb) = pos[a], pos[b]
                        ra, ca = ia - wi, ja - wj
                        rb, cb = ib - wi, jb - wj
                        idx = (ra - rb + ws - 1) * (2 * ws - 1) + (ca - cb + ws - 1)
                        logits[a, b] = q[a, sl] @ k[b, sl] / math.sqrt(hd)
                        logits[a, b] += p["table"][idx, hh]
                        if shift:
                            same = (ia + shift >= hp) == (ib + shift >= hp) and (
                                ja + shift >= wp
                            ) == (jb + shift >= wp)
                            if not same:
                                logits[a, b] += -100.0
                heads_out.append(_softmax(logits) @ v[:, sl])
            res = np.concatenate(heads_out, -1) @ p["proj_k"] + p["proj_b"]
            for t, (i, j) in enumerate(pos):
                out[i, j] = res[t]
    unshifted = np.zeros_like(out)
    for i in range(hp):
        for j in range(wp):
            unshifted[(i + shift) % hp, (j + shift) % wp] = out[i, j]
    x = x + unshifted[:h, :w]
    z = _layer_norm(x, p["norm2_g"], p["norm2_b"], eps)
    z = _gelu(z @ p["fc1_k"] + p["fc1_b"]) @ p["fc2_k"] + p["fc2_b"]
    return x + z


def _randomize(layer, rng):
    for v in layer.weights:
        v.assign(rng.normal(0, 0.5, v.shape).astype("float32"))


@pytest.mark.parametrize("shift", [False, True])
def test_swin_block_matches_numpy_oracle(shift):
    rng = np.random.default_rng(1)
    dim, heads, ws, h, w = 8, 2, 4, 7, 10  # not multiples of the window: padding path
    block = SwinBlock(dim, heads, window_size=ws, shift=shift)
    block.build((None, h, w, dim))
    _randomize(block, rng)
    x = rng.normal(size=(1, h, w, dim)).astype("float32")
    got = np.asarray(block(x))[0]
    p = dict(
        norm1_g=np.asarray(block.norm1.gamma), norm1_b=np.asarray(block.norm1.beta),
        qkv_k=np.asarray(block.qkv.kernel), qkv_b=np.asarray(block.qkv.bias),
        proj_k=np.asarray(block.proj.kernel), proj_b=np.asarray(block.proj.bias),
        table=np.asarray(block.relative_position_bias_table),
        norm2_g=np.asarray(block.norm2.gamma), norm2_b=np.asarray(block.norm2.beta),
        fc1_k=np.asarray(block.fc1.kernel), fc1_b=np.asarray(block.fc1.bias),
        fc2_k=np.asarray(block.fc2.kernel), fc2_b=np.asarray(block.fc2.bias),
    )
    want = _oracle_block(x[0].astype(np.float64), p, ws, ws // 2 if shift else 0, heads, 1e-5)
    scale = np.abs(want).max()
    assert np.abs(got - want).max() <= 1e-4 * scale


def test_shift_mask_changes_output():
    # the shifted block must differ from the plain one with the same weights
    rng = np.random.default_rng(2)
    plain = SwinBlock(8, 2, window_size=4, shift=False)
    shifted = SwinBlock(8, 2, window_size=4, shift=True)
    for b in (plain, shifted):
        b.build((None, 8, 8, 8))
    _randomize(plain, rng)
    shifted.set_weights(plain.get_weights())
    x = rng.normal(size=(1, 8, 8, 8)).astype("float32")
    assert np.abs(np.asarray(plain(x)) - np.asarray(shifted(x))).max() > 1e-3


def test_patch_merging_matches_oracle_on_odd_size():
    rng = np.random.default_rng(3)
    layer = PatchMerging(4)
    layer.build((None, 5, 7, 4))
    _randomize(layer, rng)
    x = rng.normal(size=(1, 5, 7, 4)).astype("float32")
    got = np.asarray(layer(x))[0]
    padded = np.zeros((6, 8, 4))
    padded[:5, :7] = x[0]
    g, b = np.asarray(layer.norm.gamma), np.asarray(layer.norm.beta)
    kernel = np.asarray(layer.reduction.kernel)
    assert got.shape == (3, 4, 8)
    for i in range(3):
        for j in range(4):
            cat = np.concatenate(
                [padded[2 * i, 2 * j], padded[2 * i + 1, 2 * j],
                 padded[2 * i, 2 * j + 1], padded[2 * i + 1, 2 * j + 1]]
            )
            want = _layer_norm(cat, g, b, 1e-5) @ kernel
            np.testing.assert_allclose(got[i, j], want, atol=1e-4)


def test_swin_against_timm(tmp_path):
    torch = pytest.importorskip("torch")
    timm = pytest.importorskip("timm")
    # 448: every stage (112, 56, 28, 14) is a multiple of the window and larger than it.
    # At other sizes timm differs on purpose: it shifts before padding to whole windows
    # (we pad first, as Swin's segmentation code) and drops the shift on a stage no larger
    # than the window.
    ref = timm.models.swin_transformer.SwinTransformer(
        img_size=448, embed_dim=32, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8),
        window_size=7, num_classes=10,
    ).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
    state = {k: v.detach().numpy() for k, v in ref.state_dict().items()}
    write_safetensors(tmp_path / "swin.safetensors", state)
    model = build_backbone(
        "swin_tiny", weights=tmp_path / "swin.safetensors",
        embed_dim=32, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8),
    )
    x = np.random.default_rng(0).normal(size=(1, 448, 448, 3)).astype("float32")
    with torch.no_grad():
        want = ref.forward_features(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
    got = np.asarray(model(x)["c5"])
    if want.ndim == 3:  # older timm returns tokens
        want = want.reshape(got.shape)
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max() + 1e-5
