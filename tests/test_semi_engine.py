"""The semi-supervised engine: the EMA teacher update against NumPy, a teacher outside
the gradients, per-term scalars, evaluation of the teacher, bit-exact kill-and-resume."""

import numpy as np
import pytest
import tensorflow as tf

from iseg.semi import methods as semi_methods
from iseg.semi.engine import step_seed
from iseg.semi.methods.base import SemiMethod
from iseg.semi.teacher import EMATeacher, build_peer
from iseg.training.config import DatasetMeta, TrainConfig, build_model_from_config
from iseg.training.summaries import read_events
from iseg.training.trainer import train


class _ToyEMA(SemiMethod):
    """The model's loss on labeled data plus CE to the teacher's argmax on noisy
    unlabeled images (the noise drawn from the step seed)."""

    name = "toy_ema"
    teacher = "ema"
    defaults = {"ema_alpha": 0.9, "weight": 0.5}

    def loss_terms(self, ctx, batch, seed):
        terms = ctx.supervised(batch["label"], ctx.student(ctx.normalize(batch["image"])))
        noisy = batch["u_image"] + tf.random.stateless_uniform(
            tf.shape(batch["u_image"]), seed, 0.0, 20.0)
        target = tf.argmax(ctx.teacher(ctx.normalize(batch["u_image"])), -1)
        logits = ctx.student(ctx.normalize(noisy))["logits"]
        ce = tf.keras.losses.sparse_categorical_crossentropy(target, logits, from_logits=True)
        keep = tf.cast(~batch["u_ignore"], tf.float32)
        terms["unsup"] = self.options["weight"] * tf.reduce_sum(ce * keep) / tf.maximum(
            tf.reduce_sum(keep), 1.0)
        return terms


@pytest.fixture
def toy_registered(monkeypatch):
    monkeypatch.setitem(semi_methods._METHODS, "toy_ema", f"{__name__}:_ToyEMA")


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    from iseg.datasets.synthetic import generate_shapes

    out = tmp_path_factory.mktemp("semi_engine") / "shapes"
    generate_shapes(str(out), num_train=8, num_val=2, image_size=(24, 24), num_shards=2)
    return str(out)


META = DatasetMeta(num_classes=5, class_names=list("abcde"), palette=[(0, 0, 0)] * 5)


def _model():
    return build_model_from_config(TrainConfig(model="demo_tiny", aux_weight=0.0), META)


def _randomise(model, seed):
    rng = np.random.default_rng(seed)
    for v in model.weights:
        if v.dtype == "float32":
            v.assign(rng.normal(size=v.shape).astype(np.float32))


@pytest.mark.parametrize("ramp,copy_bn", [(True, False), (False, True)])
def test_ema_update_equals_numpy(ramp, copy_bn):
    student = _model()
    teacher = EMATeacher(student, alpha=0.9, ramp=ramp, copy_bn=copy_bn)
    assert teacher.model.trainable_weights == []
    for t, s in zip(teacher.model.weights, student.weights):
        np.testing.assert_array_equal(t, s)  # starts as a copy
    _randomise(teacher.model, 1)
    _randomise(student, 2)
    before = [np.array(v) for v in teacher.model.weights]
    update = tf.function(teacher.update)
    trainable = {id(v) for v in student.trainable_weights}
    for step in (0, 3, 50):
        a = np.float32(min(1.0 - 1.0 / (step + 1), 0.9) if ramp else 0.9)
        update(tf.constant(step, tf.int64))
        for i, (t, s) in enumerate(zip(teacher.model.weights, student.weights)):
            s = np.array(s)
            if s.dtype != np.float32:
                continue
            averaged = id(student.weights[i]) in trainable or not copy_bn
            before[i] = a * before[i] + (np.float32(1) - a) * s if averaged else s
            np.testing.assert_array_equal(np.array(t), before[i], err_msg=t.path)
    moving = [v for v in student.non_trainable_weights if v.dtype == "float32"]
    assert moving  # (batch-norm statistics are covered)


def test_peer_has_the_backbone_and_another_head():
    student = _model()
    peer = build_peer(student, seed=7)
    for p, s in zip(peer.backbone.weights, student.backbone.weights):
        np.testing.assert_array_equal(p, s)
    kernels = [(p, s) for p, s in zip(peer.head.weights, student.head.weights)
               if p.path.endswith("kernel")]
    assert kernels and all(not np.array_equal(p, s) for p, s in kernels)


def test_step_seeds_differ_by_step_and_replica():
    seeds = {tuple(step_seed(0, s, r).numpy()) for s in range(3) for r in range(2)}
    assert len(seeds) == 6
    assert step_seed(0, 2, 1).dtype == tf.int32
    np.testing.assert_array_equal(step_seed(5, 2, 1), step_seed(5, 2, 1))


def _cfg(shapes, model_dir, **kw):
    base = dict(model="demo_tiny", aux_weight=0.0, dataset="shapes", data_dir=shapes,
                model_dir=str(model_dir), crop_size=(24, 24), batch_size=2, steps=4,
                semi="toy_ema", labeled_fraction=0.25, optimizer="sgd", lr=0.05,
                checkpoint_every=2, log_every=1, shuffle_buffer=8, progress=False,
                evaluate_at_end=False, resample="host", schedule="constant")
    return TrainConfig(**dict(base, **kw))


def test_semi_run_logs_terms_evaluates_the_teacher_and_resumes_bit_exactly(
        shapes, tmp_path, toy_registered):
    straight = train(_cfg(shapes, tmp_path / "a", evaluate_at_end=True))
    semi = straight["semi"]
    assert straight["model"] is semi.teacher.model and straight["student"] is semi.student
    teacher_ids = {id(v) for v in semi.teacher.variables}
    sources = list(semi.student.trainable_variables) + semi.extra_trainable_variables()
    assert sources and not teacher_ids & {id(v) for v in sources}
    scalars, _ = read_events(str(tmp_path / "a" / "logs"))
    for tag in ("loss", "loss/ce", "loss/unsup", "miou"):
        assert tag in scalars, tag
    ce, unsup, total = (scalars[t][-1][1] for t in ("loss/ce", "loss/unsup", "loss"))
    np.testing.assert_allclose(ce + unsup, total, rtol=1e-5)
    assert total == pytest.approx(straight["losses"][-1], rel=1e-6)
    assert "miou" in straight["scores"]
    # evaluate / export load the teacher's weights, as training evaluated it
    from iseg.cli.evaluate import load_model_for_inference

    cfg = _cfg(shapes, tmp_path / "a")
    for weights, key in (("auto", "model"), ("teacher", "model"), ("student", "student")):
        loaded, _ = load_model_for_inference(cfg, weights=weights)
        for x, y in zip(straight[key].weights, loaded.weights):
            np.testing.assert_array_equal(np.array(x), np.array(y), err_msg=x.path)
    # and so does predict from the model_dir: its labels are the teacher's
    from iseg.cli.predict import Predictor
    from iseg.datasets.pipeline import normalize

    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    labels = Predictor(str(tmp_path / "a")).predict(image)
    norm = straight["model"].normalization
    teacher_logits = straight["model"](normalize(image[None].astype("float32"), norm))
    np.testing.assert_array_equal(labels, np.argmax(np.array(teacher_logits), -1)[0])
    # killed after step 2 (its checkpoint), then the same flags again
    train(_cfg(shapes, tmp_path / "b", steps=2))
    resumed = train(_cfg(shapes, tmp_path / "b"))
    assert len(resumed["losses"]) == 2
    np.testing.assert_array_equal(resumed["losses"], straight["losses"][2:])
    for key in ("student", "model"):  # the student and the EMA teacher
        for x, y in zip(straight[key].weights, resumed[key].weights):
            np.testing.assert_array_equal(np.array(x), np.array(y), err_msg=x.path)


def _method_variables(engine):
    """What a resumed run must restore beside the student: the peer's variables, the
    method's layers' and its state."""
    out = list(engine.peer.variables) if engine.peer is not None else []
    out += [v for layer in engine.method.trainable_layers() for v in layer.variables]
    return out + list(engine.method.state().values())


@pytest.mark.parametrize("semi, options", [
    ("corrmatch", {"corr_channels": 8, "num_regions": 4}),  # adaptive threshold + head
])
def test_kill_and_resume_is_bit_exact_for_method_layers_state_and_peer(shapes, tmp_path, semi,
                                                                       options):
    def cfg(name, **kw):
        return _cfg(shapes, tmp_path / name, semi=semi, semi_options=options, **kw)

    straight = train(cfg("a"))
    train(cfg("b", steps=2))  # killed after step 2 (its checkpoint), then the same flags
    resumed = train(cfg("b"))
    np.testing.assert_array_equal(resumed["losses"], straight["losses"][2:])
    for x, y in zip(straight["student"].weights, resumed["student"].weights):
        np.testing.assert_array_equal(np.array(x), np.array(y), err_msg=x.path)
    first, second = (_method_variables(run["semi"]) for run in (straight, resumed))
    assert first and len(first) == len(second)
    for x, y in zip(first, second):
        np.testing.assert_array_equal(np.array(x), np.array(y), err_msg=x.name)
    if semi == "corrmatch":  # the threshold moved, so the check is not of initial values
        assert straight["semi"].method.threshold.numpy() != np.float32(0.85)


class _ToyState(_ToyEMA):
    name = "toy_state"
    teacher = "peer"

    def build(self, ctx):
        self.tau = tf.Variable(0.85, trainable=False, name="tau")
        self.head = tf.keras.layers.Dense(2)
        self.head.build((None, 3))

    def trainable_layers(self):
        return [self.head]

    def state(self):
        return {"tau": self.tau}


def test_checkpoints_hold_the_peer_the_method_layers_and_state(monkeypatch):
    from iseg.semi.engine import SemiEngine

    monkeypatch.setitem(semi_methods._METHODS, "toy_state", f"{__name__}:_ToyState")
    student = _model()
    engine = SemiEngine(TrainConfig(model="demo_tiny", semi="toy_state", labeled_fraction=0.5),
                        META, student, "minus_one_to_one")
    objects = engine.checkpoint_objects()
    assert sorted(objects) == ["method_layers", "method_state", "peer"]
    assert objects["method_state"].tau is engine.method.tau
    saved = {id(v) for v in objects["peer"]._trackable_children().values()}
    assert saved == {id(v) for v in engine.peer.variables}
    extra = {id(v) for v in engine.extra_trainable_variables()}
    assert extra == {id(v) for v in engine.peer.trainable_variables + engine.method.head.
                     trainable_variables}
    assert engine.eval_model is student and engine.teacher is None


def test_head_lr_multiplier_covers_the_peer_head_and_method_layers(monkeypatch):
    from iseg.semi.engine import SemiEngine
    from iseg.training.config import optimizer_for

    monkeypatch.setitem(semi_methods._METHODS, "toy_state", f"{__name__}:_ToyState")
    cfg = TrainConfig(model="demo_tiny", semi="toy_state", labeled_fraction=0.5, lr=0.1,
                      momentum=0.0, head_lr_multiplier=10.0)
    student = _model()
    engine = SemiEngine(cfg, META, student, "minus_one_to_one")
    extra = engine.extra_trainable_variables()
    optimizer = optimizer_for(cfg, student, extra, engine.extra_backbone_variables())
    variables = student.trainable_variables + extra
    before = [np.array(v) for v in variables]
    optimizer.apply([tf.ones_like(v) for v in variables], variables)
    backbone = {id(v) for v in student.backbone.trainable_variables +
                engine.peer.backbone.trainable_variables}
    assert len(backbone) < len(variables)
    for v, b in zip(variables, before):
        rate = 0.1 if id(v) in backbone else 1.0  # the poly schedule's lr at step 0
        np.testing.assert_allclose(b - np.array(v), rate, rtol=1e-5, err_msg=v.path)
