import numpy as np
import keras
import pytest

from iseg.losses import pixel_cross_entropy


def _loop_ce(labels, logits, ignore, class_weights=None, reduction="valid_mean", ohem=None):
    """Oracle: per-pixel loop."""
    n, h, w, k = logits.shape
    total, denom, losses = 0.0, 0.0, []
    for b in range(n):
        for i in range(h):
            for j in range(w):
                y = labels[b, i, j]
                if y == ignore:
                    continue
                z = logits[b, i, j].astype(np.float64)
                logp = z - z.max() - np.log(np.exp(z - z.max()).sum())
                wt = 1.0 if class_weights is None else class_weights[y]
                losses.append((-logp[y], wt, np.exp(logp[y])))
    if ohem is not None:
        thresh, min_kept = ohem
        probs = sorted(p for _, _, p in losses)
        kth = probs[min(min_kept, len(probs) - 1)]
        t = max(kth, thresh)
        losses = [(loss, wt, p) for loss, wt, p in losses if p < t]
    for loss, wt, _ in losses:
        total += loss * wt
        denom += wt
    if reduction == "all_pixels":
        return total / (n * h * w)
    return total / denom if denom else 0.0


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    logits = rng.normal(scale=3, size=(2, 5, 7, 4)).astype("float32")
    labels = rng.integers(0, 4, size=(2, 5, 7)).astype("int32")
    labels[0, :2] = 255
    return labels, logits


@pytest.mark.parametrize("reduction", ["valid_mean", "all_pixels"])
def test_ce_matches_loop(data, reduction):
    labels, logits = data
    got = float(pixel_cross_entropy(labels, logits, reduction=reduction))
    assert got == pytest.approx(_loop_ce(labels, logits, 255, reduction=reduction), rel=1e-5)


def test_ce_class_weights(data):
    labels, logits = data
    cw = [0.5, 2.0, 1.0, 3.0]
    got = float(pixel_cross_entropy(labels, logits, class_weights=cw))
    assert got == pytest.approx(_loop_ce(labels, logits, 255, class_weights=cw), rel=1e-5)


@pytest.mark.parametrize("thresh,min_kept", [(0.7, 5), (0.3, 40), (0.9, 0)])
def test_ce_ohem(data, thresh, min_kept):
    labels, logits = data
    got = float(pixel_cross_entropy(labels, logits, ohem_thresh=thresh, ohem_min_kept=min_kept))
    assert got == pytest.approx(_loop_ce(labels, logits, 255, ohem=(thresh, min_kept)), rel=1e-5)


def test_ce_all_ignored_is_zero_not_nan(data):
    labels, logits = data
    labels = np.full_like(labels, 255)
    assert float(pixel_cross_entropy(labels, logits)) == 0.0


def test_ce_float16_logits_computed_in_float32(data):
    labels, logits = data
    got = pixel_cross_entropy(labels, logits.astype("float16"))
    assert keras.backend.standardize_dtype(got.dtype) == "float32"
    assert float(got) == pytest.approx(
        _loop_ce(labels, logits.astype("float16").astype("float32"), 255), rel=1e-4
    )


def test_ce_rejects_unknown_reduction(data):
    labels, logits = data
    with pytest.raises(ValueError, match="'sum'"):
        pixel_cross_entropy(labels, logits, reduction="sum")
