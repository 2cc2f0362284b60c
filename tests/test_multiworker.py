"""Scale-out: MultiWorkerMirroredStrategy with two worker processes on 127.0.0.1, and
MirroredStrategy over two logical CPU devices against one device (subprocess tests)."""

import json
import os
import socket
import subprocess
import sys

import numpy as np

TESTS = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(TESTS)
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")

MIRRORED = """
import json, sys
sys.path.insert(0, {tests!r})
from iseg.training.strategy import split_cpu
split_cpu(2)
import numpy as np
from iseg.errors import ConfigError
from test_train_support import run_toy, toy_train_fn
out = {{}}
for name in ("mirrored", "one_device"):
    r = run_toy({root!r} + "/" + name, strategy=name, steps=3, batch_size=4, sync_bn=True,
                data=toy_train_fn(shuffle=False))
    out[name] = dict(replicas=r["strategy"].num_replicas_in_sync, losses=r["losses"],
                     weights=[np.asarray(v).tolist() for v in r["model"].weights])
try:
    run_toy({root!r} + "/bad", strategy="mirrored", steps=1, batch_size=3)
except ConfigError as e:
    out["error"] = str(e)
print("RESULT" + json.dumps(out))
"""


def test_mirrored_two_cpu_replicas_match_one_device(tmp_path):
    code = MIRRORED.format(tests=TESTS, root=str(tmp_path))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=600, env=ENV)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.split("RESULT", 1)[1])
    assert out["mirrored"]["replicas"] == 2 and out["one_device"]["replicas"] == 1
    np.testing.assert_allclose(out["mirrored"]["losses"], out["one_device"]["losses"],
                               rtol=1e-5)
    for a, b in zip(out["mirrored"]["weights"], out["one_device"]["weights"]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    # bad input: a global batch that does not split over the replicas names both numbers
    assert "--batch_size=3" in out["error"] and "2 replicas" in out["error"]


VIEWS = """
import json, sys
sys.path.insert(0, {tests!r})
from iseg.training.strategy import split_cpu
split_cpu(2)
import numpy as np
from iseg.datasets.synthetic import generate_shapes
from iseg.training.config import dataset_meta
from iseg.training.trainer import train
from test_train_support import tiny_model_fn, toy_config
data = {root!r} + "/shapes"
generate_shapes(data, num_train=8, num_val=2, image_size=(24, 24), num_shards=1)
out = {{}}
for name in ("mirrored", "one_device"):
    cfg = toy_config({root!r} + "/" + name, strategy=name, steps=3, batch_size=4,
                     sync_bn=True, data_dir=data, resample="device", shuffle_buffer=1,
                     min_scale=1.0)  # no padding: each replica averages all its pixels
    r = train(cfg, model_fn=tiny_model_fn(), meta=dataset_meta(cfg))
    out[name] = dict(replicas=r["strategy"].num_replicas_in_sync, losses=r["losses"])
print("RESULT" + json.dumps(out))
"""


def test_mirrored_replicas_resample_their_share_of_the_views(tmp_path):
    """--resample=device under MirroredStrategy: each replica resamples its slice of the
    batch of views; the losses equal one device reading the same records."""
    code = VIEWS.format(tests=TESTS, root=str(tmp_path))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=600, env=ENV)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.split("RESULT", 1)[1])
    assert out["mirrored"]["replicas"] == 2 and len(out["mirrored"]["losses"]) == 3
    np.testing.assert_allclose(out["mirrored"]["losses"], out["one_device"]["losses"],
                               rtol=1e-5)


WORKER = """
import json, sys
import numpy as np
from iseg.cli.train import run
result = run(["train.py"] + sys.argv[2:])
np.savez(sys.argv[1], *[np.asarray(v) for v in result["model"].weights])
print("LOSSES" + json.dumps(result["losses"]))
"""

TINY = """--data_dir={data}
--dataset=shapes
--head=fcn
--backbone=resnet18
--backbone_options=depths=(1,1,1,1),widths=(4,4,8,8),stem_width=8
--head_options=channels=8,end_channels=8
--aux_weight=0.4
--batch_size=4
--steps=3
--checkpoint_every=2
--crop_size=33,33
--optimizer=sgd
--lr=0.01
--sync_bn=true
--evaluate_at_end=false
--progress=false
--strategy=multi_worker
"""


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def test_two_workers_train_and_agree_on_the_weights(tmp_path):
    from iseg.datasets.synthetic import generate_shapes

    data = tmp_path / "shapes"
    generate_shapes(str(data), num_train=8, num_val=2, image_size=(40, 40), num_shards=2)
    cfg = tmp_path / "tiny.cfg"
    cfg.write_text(TINY.format(data=data))
    workers = [f"127.0.0.1:{p}" for p in _free_ports(2)]
    procs = []
    for i in range(2):
        env = dict(ENV, TF_CONFIG=json.dumps(
            {"cluster": {"worker": workers}, "task": {"type": "worker", "index": i}}))
        procs.append(subprocess.Popen(
            [sys.executable, "-c", WORKER, str(tmp_path / f"w{i}.npz"),
             f"--flagfile={cfg}", f"--model_dir={tmp_path / 'run'}"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO))
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=480))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    losses = [json.loads(o.split("LOSSES", 1)[1]) for o, _ in outs]
    assert len(losses[0]) == 3
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-6)  # global (all-reduced) loss
    w0, w1 = np.load(tmp_path / "w0.npz"), np.load(tmp_path / "w1.npz")
    assert len(w0.files) == len(w1.files) > 10
    for k in w0.files:
        np.testing.assert_allclose(w0[k], w1[k], rtol=1e-6, atol=1e-7)
    # the chief writes model_dir/checkpoints; worker 1 keeps its own (its input position)
    assert (tmp_path / "run" / "checkpoints" / "checkpoint").is_file()
    assert (tmp_path / "run" / ".worker1" / "checkpoints" / "checkpoint").is_file()
