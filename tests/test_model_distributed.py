"""`SegmentationModel.fit` under MirroredStrategy (two logical CPUs): the loss is scaled for
distribution, so two replicas that each see the same half-batch take exactly the step one
device takes on that half-batch (an unscaled loss would double the update)."""

import json
import os
import subprocess
import sys

import numpy as np

CODE = """
import json
import numpy as np
import tensorflow as tf
tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
from iseg.models import build_model_from_name

def build():
    keras.utils.set_random_seed(0)
    return build_model_from_name(
        "fcn_resnet50_d8", 3, car={}, aux_options=dict(channels=4), head_options=dict(channels=8),
        backbone_options=dict(depths=(1, 1, 1, 1), widths=(4, 4, 8, 8), stem_width=8))

rng = np.random.default_rng(0)
x = rng.uniform(-1, 1, size=(2, 33, 33, 3)).astype("float32")
y = rng.integers(0, 3, size=(2, 33, 33)).astype("int32")
out = {}
one = build()
one.compile(optimizer=keras.optimizers.SGD(0.1))
out["one"] = one.fit(x, y, batch_size=2, epochs=1, shuffle=False, verbose=0).history["loss"]
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
with strategy.scope():
    two = build()
    two.compile(optimizer=keras.optimizers.SGD(0.1))
two.set_weights([np.asarray(w) for w in build().weights])
xx, yy = np.concatenate([x, x]), np.concatenate([y, y])  # each replica gets (x, y)
out["two"] = two.fit(xx, yy, batch_size=4, epochs=1, shuffle=False, verbose=0).history["loss"]
out["replicas"] = strategy.num_replicas_in_sync
out["diff"] = max(float(np.abs(np.asarray(a) - np.asarray(b)).max())
                  for a, b in zip(one.trainable_weights, two.trainable_weights))
out["moved"] = max(float(np.abs(np.asarray(a) - np.asarray(b)).max())
                   for a, b in zip(one.trainable_weights, build().trainable_weights))
print("RESULT" + json.dumps(out))
"""


def test_fit_on_two_replicas_equals_one_device():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", KERAS_BACKEND="tensorflow")
    r = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True,
                       timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.split("RESULT", 1)[1])
    assert out["replicas"] == 2
    np.testing.assert_allclose(out["two"], out["one"], rtol=1e-5)
    assert out["moved"] > 1e-3  # the step did change the weights ...
    assert out["diff"] < 1e-5 * max(1.0, out["moved"]) + 1e-6  # ... identically
