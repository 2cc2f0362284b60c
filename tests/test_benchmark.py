"""iseg.benchmark's MAC counter against hand counts and ResNet-50's published cost, and
`python -m iseg.cli.benchmark` end to end on a tiny model (TensorFlow and a JAX subprocess)."""

import datetime
import importlib.util
import json
import os

import keras
import numpy as np
import pytest

from iseg import benchmark, ops
from iseg.cli import flags as flags_lib


def _small_net():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same")(inputs)
    x = keras.layers.Conv2D(6, 3, strides=2, padding="same", groups=2)(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same")(x)
    x = keras.layers.Conv2DTranspose(2, 2, strides=2)(x)
    x = keras.layers.Dense(5)(x)
    x = keras.layers.Lambda(lambda t: ops.resize(t, (16, 16)))(x)
    return keras.Model(inputs, x)


def test_hand_count_of_a_small_conv_net():
    hand = (8 * 8 * 4 * (3 * 3 * 3)      # conv: output elements x taps x input channels
            + 4 * 4 * 6 * (3 * 3 * 2)    # grouped conv (2 groups): 2 input channels a group
            + 4 * 4 * 6 * (3 * 3)        # depthwise: output elements x taps
            + 4 * 4 * 6 * (2 * 2 * 2)    # transposed: input elements x taps x out channels
            + 8 * 8 * 5 * 2              # dense: output elements x input features
            + 2 * (16 * 8 * 5) + 2 * (16 * 16 * 5))  # bilinear resize: two 1-axis passes
    model = _small_net()
    assert benchmark.model_macs(model, (8, 8, 3)) == hand == 14752
    with benchmark.count_macs() as total:
        model(np.zeros((3, 8, 8, 3), "float32"))
    assert total[0] == 3 * hand  # the whole batch
    with benchmark.count_macs() as total:  # nearest-neighbour resizes are gathers
        ops.resize(np.zeros((1, 4, 4, 2), "float32"), (8, 8), "nearest")
    assert total[0] == 0


def test_ops_calls_are_counted_and_everything_is_restored():
    originals = (keras.ops.einsum, keras.ops.matmul, keras.ops.conv, ops._interp_axis,
                 ops.atrous_conv)
    layers = (keras.layers.Conv2D, keras.layers.Dense, keras.layers.DepthwiseConv2D,
              keras.layers.Conv2DTranspose)
    calls = [vars(cls).get("call", "inherited") for cls in layers]
    a, b = np.ones((2, 5, 3), "float32"), np.ones((2, 7, 3), "float32")
    with benchmark.count_macs() as total:
        keras.ops.einsum("npc,nqc->npq", a, b)
        assert total[0] == 2 * 5 * 7 * 3
        keras.ops.matmul(a, np.ones((2, 3, 7), "float32"))
        assert total[0] == 2 * (2 * 5 * 7 * 3)
        keras.ops.conv(np.ones((1, 8, 8, 3), "float32"), np.ones((3, 3, 3, 4), "float32"),
                       padding="same", dilation_rate=2)
        assert total[0] == 2 * (2 * 5 * 7 * 3) + 8 * 8 * 4 * 27
        ops.atrous_conv(np.ones((1, 4, 4, 3), "float32"), np.ones((3, 3, 3, 4), "float32"), 8)
        assert total[0] == 2 * (2 * 5 * 7 * 3) + 8 * 8 * 4 * 27 + 4 * 4 * 4 * 27  # all taps
    from iseg.layers.conv_bn_act import ConvBNAct
    with benchmark.count_macs() as total:  # once, as the layer, not again as its matmul
        ConvBNAct(4, 3, dilation_rate=2)(np.ones((1, 4, 4, 3), "float32"))
    assert total[0] == 4 * 4 * 4 * 27
    assert benchmark.einsum_macs("...c,ck->...k", np.ones((2, 4, 3)), np.ones((3, 6))) == \
        3 * 6  # "..." dims are not indices of the equation
    assert (keras.ops.einsum, keras.ops.matmul, keras.ops.conv, ops._interp_axis,
            ops.atrous_conv) == originals
    assert [vars(cls).get("call", "inherited") for cls in layers] == calls
    with pytest.raises(ZeroDivisionError), benchmark.count_macs():
        raise ZeroDivisionError
    assert keras.ops.einsum is originals[0]
    assert [vars(cls).get("call", "inherited") for cls in layers] == calls


def test_resnet50_at_224_costs_the_published_4_1_gmacs():
    from iseg.backbones.registry import build_backbone

    model = build_backbone("resnet50", input_shape=(224, 224, 3))  # output stride 32
    macs = benchmark.model_macs(model, (224, 224, 3))
    assert abs(macs / 4.1e9 - 1) < 0.02, macs


TINY = ["--model=demo_tiny", "--crop_size=33", "--batch_size=2", "--repeats=2",
        "--warmup=1", "--matmul_size=64", "--conv_shape=8,8", "--noprogress"]


def _run_cli(*args):
    from iseg.cli import benchmark as cli

    try:
        return cli.run(["iseg.cli.benchmark", *args])
    finally:
        flags_lib.FLAGS.unparse_flags()


def test_time_rounds_interleaves_the_calls_after_their_warm_up():
    calls = []
    fns = {name: (lambda name=name: calls.append(name)) for name in "ab"}
    times = benchmark.time_rounds(fns, repeats=3, warmup=2)
    assert calls == ["a", "a", "b", "b"] + ["a", "b"] * 3
    for t in times.values():
        assert len(t["runs_s"]) == 3 and 0 < t["min_s"] <= t["median_s"] <= t["max_s"]
        assert t["median_s"] == np.median(t["runs_s"])


@pytest.mark.parametrize("isa", [None, "AVX2"])
def test_machine_info_records_the_onednn_settings(monkeypatch, isa):
    if isa is None:
        monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    else:
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", isa)
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "0")  # read as set, whatever TF's state
    info = benchmark.machine_info()
    assert (info["ONEDNN_MAX_CPU_ISA"], info["TF_ENABLE_ONEDNN_OPTS"]) == (isa, "0")
    assert isinstance(info["onednn"], bool)


def test_cli_writes_the_results_as_json(tmp_path, monkeypatch, capsys):
    from iseg.training.config import DatasetMeta, TrainConfig, build_model_from_config

    backends = ["tensorflow"] + (["jax"] if importlib.util.find_spec("jax") else [])
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.setenv("KERAS_BACKEND", "tensorflow")
    out = tmp_path / "bench.json"
    cfg = tmp_path / "tiny.cfg"  # read as the other tools read flag files
    cfg.write_text("\n".join(TINY) + "\n")
    returned = _run_cli(f"--flagfile={cfg}", f"--backends={','.join(backends)}",
                        f"--output={out}")
    result = json.loads(out.read_text())
    assert result == json.loads(json.dumps(returned))
    assert {"date", "command", "flags", "machine", "model", "flops", "peak", "memory",
            "backends"} <= set(result)
    assert datetime.datetime.fromisoformat(result["date"]).tzinfo is not None
    assert result["flags"]["repeats"] == 2 and result["flags"]["model"] == "demo_tiny"
    assert result["machine"]["cores"] == os.cpu_count()
    assert result["machine"]["tensorflow"] and result["machine"]["keras"] == keras.__version__
    meta = DatasetMeta(num_classes=21, class_names=[], palette=[])
    model = build_model_from_config(TrainConfig(model="demo_tiny"), meta)
    assert result["model"]["params"] == model.count_params()
    flops = result["flops"]
    assert flops["inference_flops_per_image"] == 2 * benchmark.model_macs(model, (33, 33, 3))
    assert flops["training_step_flops_per_image"] == 6 * benchmark.model_macs(
        model, (33, 33, 3), training=True)
    assert result["peak"]["matmul"]["flops"] == 2 * 64 ** 3
    assert result["peak"]["conv3x3_fwd_bwd"]["flops"] == 6 * 8 * 8 * 8 * 8 * 9
    assert sorted(result["backends"]) == sorted(backends)
    for backend, part in result["backends"].items():
        assert part["version"] == __import__(backend).__version__
        for phase in ("train_step", "inference"):
            t = part[phase]
            assert len(t["runs_s"]) == 2 and 0 < t["min_s"] <= t["median_s"] <= t["max_s"]
            assert t["images_per_s"] == pytest.approx(2 / t["median_s"])
            assert 50 * 2**20 < t["peak_rss_bytes"] < 64 * 2**30
            per_image = flops["inference_flops_per_image" if phase == "inference" else
                              "training_step_flops_per_image"]
            for name, peak in result["peak"].items():
                assert len(peak["runs_s"]) == 2
                rates = [per_image * 2 / step for step in t["runs_s"]]
                if backend == "tensorflow":  # each round's ratio: timed in the same rounds
                    refs = [peak["flops"] / ref for ref in peak["runs_s"]]
                    expected = np.median([r / ref for r, ref in zip(rates, refs)])
                else:
                    expected = per_image * t["images_per_s"] / peak["flop_per_s"]
                assert t["mfu"][name] == pytest.approx(expected)
                assert t["achieved_flop_per_s"] == pytest.approx(per_image * 2 / t["median_s"])
    text = capsys.readouterr().out
    assert text.startswith("demo_tiny: ") and "tensorflow train_step: " in text


def test_unknown_model_is_a_one_line_error_listing_the_choices(capsys):
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env["PYTHONPATH"] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, "-m", "iseg.cli.benchmark", "--model=nope"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    err = proc.stderr.strip().splitlines()  # quiet start-up: only the error
    assert len(err) == 1, proc.stderr
    assert err[0].startswith("iseg.cli.benchmark: error: Unknown model 'nope'. Valid models: "
                             "the presets ")
    assert "demo_tiny" in err[0] and "deeplabv3" in err[0] and "resnet50" in err[0]
    with pytest.raises(SystemExit) as e:
        _run_cli("--model=demo_tiny", "--backends=tensorflow,mxnet")
    assert e.value.code == 1
    assert capsys.readouterr().err.strip() == ("iseg.cli.benchmark: error: unknown "
                                               "--backends=mxnet; valid: tensorflow, jax, torch")
    with pytest.raises(SystemExit) as e:
        _run_cli("--model=demo_tiny", "--model_only")
    assert e.value.code == 1
    assert capsys.readouterr().err.strip() == ("iseg.cli.benchmark: error: --model_only "
                                               "writes its timings to --output: give one")
