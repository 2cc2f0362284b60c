"""Exported SavedModels carry the inference network only: no SAR anchors or projector, no
aux head, no CAR loss buffers, no HFGD high-level branch."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from iseg.export import export_saved_model
from iseg.models import build_model

TINY = dict(depths=(1, 1, 1, 1), widths=(4, 4, 8, 8), stem_width=8)
CASES = {
    "fcn_sar": dict(head="fcn", head_options=dict(channels=8, end_channels=4), sar={},
                    aux_weight=0.4, aux_options=dict(channels=4)),
    "hfgd": dict(head="hfgd", head_options=dict(context_channels=8, num_heads=2,
                                                fpn_channels=4)),
    "card": dict(head="card", head_options=dict(channels=8, num_heads=2, decoder_channels=4,
                                                low_level_channels=4),
                 car=dict(filters=4, use_ema_centers=True)),
}


def _graph_nodes(loaded):
    fn = loaded.signatures["serving_default"]
    graph = fn.graph.as_graph_def()
    nodes = [n for n in graph.node]
    for f in graph.library.function:
        nodes += list(f.node_def)
    return nodes


@pytest.mark.parametrize("case", sorted(CASES))
def test_export_has_no_training_only_variables_or_branch(tmp_path, case):
    keras.utils.set_random_seed(0)
    options = dict(CASES[case])
    model = build_model(options.pop("head"), "resnet18", 3, backbone_options=TINY,
                        input_shape=(32, 32, 3), **{"aux_weight": 0.0, **options})
    path = export_saved_model(model, str(tmp_path / "export"))
    loaded = tf.saved_model.load(path)
    saved = [(name, shape) for name, shape in tf.train.list_variables(
        f"{path}/variables/variables") if name.endswith("VARIABLE_VALUE")]
    inference = model.backbone.weights + model.head.weights
    assert len(saved) == len(inference)
    assert sorted(list(s) for _, s in saved) == sorted(list(v.shape) for v in inference)
    assert all(n.startswith(("backbone/", "head/")) for n, _ in saved)
    training_only = [w for w in model.weights if all(w is not v for v in inference)]
    assert training_only or case == "hfgd"  # HFGD's training-only part is computation
    x = np.random.default_rng(0).integers(0, 255, size=(1, 32, 32, 3)).astype("uint8")
    out = loaded.signatures["serving_default"](images=tf.constant(x))
    assert out["labels"].shape == (1, 32, 32)
    if case == "hfgd":  # the class tokens are only read (einsum), never run as a conv
        convs = [n.name for n in _graph_nodes(loaded) if n.op == "Conv2D"]
        assert convs and not [n for n in convs if "classifier" in n]
