"""benchmarks/side_by_side.py runs end to end in --quick mode and writes its JSON."""

import datetime
import importlib.util
import json
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _script():
    spec = importlib.util.spec_from_file_location(
        "side_by_side", os.path.join(ROOT, "benchmarks", "side_by_side.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(tmp_path, *extra):
    out = tmp_path / "r.json"
    _script().main(["--quick", f"--output={out}", *extra])
    return json.loads(out.read_text())


def test_quick_layer_sections_write_timings_ratios_and_the_machine(tmp_path):
    result = _run(tmp_path, "--sections", "caa", "ksac", "dilated")
    assert result["quick"] is True
    assert {"cpu", "cores", "onednn", "TF_ENABLE_ONEDNN_OPTS", "load_average", "tensorflow",
            "keras", "load_average_end"} <= set(result["machine"])
    caa = result["caa"]["9"]
    assert set(caa["times"]) == {"closed", "grouped"}
    assert len(caa["times"]["closed"]["runs_s"]) == result["settings"]["repeats"] == 1
    assert all(m > 0 for m in caa["peak_rss_increase_bytes"].values())
    assert caa["ratio_time"] == pytest.approx(
        caa["times"]["closed"]["runs_s"][0] / caa["times"]["grouped"]["runs_s"][0])
    ksac = result["ksac"]
    # KSAC shares one 3x3 kernel over its three rates: two kernels fewer than ASPP's
    assert ksac["aspp"]["params"] - ksac["ksac"]["params"] == 2 * 3 * 3 * 16 * 8
    assert ksac["ksac"]["macs_per_image"] == ksac["aspp"]["macs_per_image"]
    assert "backbones" not in result and "mfu" not in result
    assert set(result["dilated"]) == {"1x9x9x8 rate 2", "1x9x9x8 rate 4"}
    dilated = result["dilated"]["1x9x9x8 rate 4"]
    assert dilated["phase_size"] == [3, 3] and dilated["chosen"] in ("phase", "taps")
    assert set(dilated["times"]) == {"keras", "phase", "taps"}


def test_mfu_variants_trace_the_kernels_they_name():
    import keras

    from iseg import benchmark

    sbs = _script()
    x, y = sbs._seg_data(33, 1)
    model = sbs.seg_model(True, car=True)
    found = {}
    for name, (keras_dilated, keras_bn) in sbs.MFU_VARIANTS.items():
        step = benchmark.make_train_step(model, sbs._sgd(), benchmark.segmentation_loss)
        graph = sbs._traced(step, x, y, keras_dilated, keras_bn).graph
        ops = {op.type for op in graph.get_operations()}
        for f in graph.as_graph_def().library.function:  # the gradient's and the layers' bodies
            ops |= {node.op for node in f.node_def}
        found[name] = ("FusedBatchNormV3" in ops, "SpaceToBatchND" in ops)
    assert found == {"after": (True, False), "keras_bn": (False, False), "before": (False, True)}
    norms = [layer for layer in model._flatten_layers()
             if isinstance(layer, keras.layers.BatchNormalization)]
    assert norms and all(type(layer) is sbs.BatchNormalization for layer in norms)


@pytest.mark.slow
def test_quick_run_of_every_section_and_the_plot(tmp_path):
    png = tmp_path / "sizes.png"
    result = _run(tmp_path, f"--plot={png}")
    assert set(result["backbones"]) == {"resnet50", "convnext_tiny"}
    assert [s["size"] for s in result["sizes"]] == [32, 40]
    mfu = result["mfu"]
    assert set(mfu["times"]) == {"after", "keras_bn", "before", "conv3x3_fwd_bwd"}
    assert mfu["mfu_after"] == pytest.approx(
        mfu["flops_per_step"] / mfu["times"]["after"]["runs_s"][0]
        / (mfu["conv3x3_fwd_bwd_flops"] / mfu["times"]["conv3x3_fwd_bwd"]["runs_s"][0]))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _op_profile():
    spec = importlib.util.spec_from_file_location(
        "op_profile", os.path.join(ROOT, "benchmarks", "op_profile.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_op_profile_sums_kernel_time_by_op_type(tmp_path):
    module = _op_profile()
    found = {}
    for variant in ("after", "keras_bn"):
        out = tmp_path / f"{variant}.json"
        module.main(["--quick", f"--variant={variant}", f"--output={out}"])
        per_step = json.loads(out.read_text())["seconds_per_step"]
        assert sum(per_step.values()) > 0 and min(per_step.values()) >= 0
        assert not set(per_step) & module.NOT_OPS
        assert any("Conv2DBackpropFilter" in op for op in per_step)  # kernels of the backward
        found[variant] = any("FusedBatchNorm" in op for op in per_step)
    assert found == {"after": True, "keras_bn": False}


def test_op_profile_profiles_a_flag_files_model_at_its_crop_and_batch(tmp_path, capsys):
    from iseg.training.config import DatasetMeta, TrainConfig, build_model_from_config

    module = _op_profile()
    cfg = tmp_path / "tiny.cfg"
    cfg.write_text("--model=demo_tiny\n--crop_size=17,25\n--batch_size=3\n")
    x, y, model = module.flagfile_data_and_model(str(cfg))
    assert (x.shape, y.shape) == ((3, 17, 25, 3), (3, 17, 25))
    meta = DatasetMeta(num_classes=21, class_names=[], palette=[])  # the benchmark's default
    tiny = build_model_from_config(TrainConfig(model="demo_tiny"), meta)
    assert model.count_params() == tiny.count_params()
    built = []  # the profile runs that model
    module.flagfile_data_and_model = lambda path: built.append(path) or (x, y, model)
    out = tmp_path / "p.json"
    module.main([f"--flagfile={cfg}", "--steps=1", f"--output={out}"])
    assert built == [str(cfg)]
    result = json.loads(out.read_text())
    settings = result["settings"]
    assert (settings["flagfile"], settings["size"], settings["batch"]) == (str(cfg), None, None)
    assert datetime.datetime.fromisoformat(result["date"]).tzinfo is not None
    assert any("Conv2DBackpropFilter" in op for op in result["seconds_per_step"])
    assert f"after, {cfg}: " in capsys.readouterr().out
