"""CARBlock: the head-side 1x1 convs of CAR (z = linear conv; out = end conv or z)."""

import numpy as np
import pytest
import keras

from iseg.layers.car import CARBlock
from iseg.losses.car import car_multi_rate_losses


@pytest.mark.parametrize("cin,filters", [(6, 4), (3, 8)])
@pytest.mark.parametrize("end_conv", [True, False])
def test_outputs_match_matmul_oracle(cin, filters, end_conv):
    x = np.random.default_rng(0).normal(size=(2, 5, 4, cin)).astype("float32")
    block = CARBlock(filters, apply_end_conv=end_conv)
    out, z = block(x, training=False)
    c = min(cin, filters)
    assert z.shape == (2, 5, 4, c) and out.shape == (2, 5, 4, c)
    w, b = block.linear_conv.kernel.numpy()[0, 0], block.linear_conv.bias.numpy()
    np.testing.assert_allclose(z, x @ w + b, atol=1e-5)
    if end_conv:
        bn = block.end_conv.bn
        y = np.asarray(z) @ block.end_conv.conv.kernel.numpy()[0, 0]
        y = (y - bn.moving_mean.numpy()) / np.sqrt(bn.moving_variance.numpy() + bn.epsilon)
        y = np.maximum(y * bn.gamma.numpy() + bn.beta.numpy(), 0)
        np.testing.assert_allclose(out, y, atol=1e-5)
    else:
        np.testing.assert_allclose(out, z)


def test_round_trip_and_losses_on_z(tmp_path):
    x = np.random.default_rng(1).normal(size=(2, 6, 6, 5)).astype("float32")
    labels = np.random.default_rng(2).integers(0, 3, size=(2, 12, 12)).astype("int32")
    inp = keras.Input((6, 6, 5))
    out, z = CARBlock(4)(inp)
    model = keras.Model(inp, [out, z])
    path = tmp_path / "car_block.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    for a, b in zip(loaded(x), model(x)):
        np.testing.assert_allclose(a, b, atol=1e-6)
    # labels at twice the feature size, rates 1 and 2: finite terms
    terms = car_multi_rate_losses(model(x)[1], labels, 3, (1, 2), 255)
    assert set(terms) == {"intra", "inter_c2c", "inter_c2p"}
    assert all(np.isfinite(float(v)) and float(v) > 0 for v in terms.values())
