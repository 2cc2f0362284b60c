"""Every shipped flag file parses, names a real model and dataset, and the model-zoo rows
carry the published CAR recipe."""

import pathlib

import pytest
from absl import flags

from iseg.backbones import BACKBONES
from iseg.cli import flags as iflags
from iseg.datasets import get_dataset_spec
from iseg.heads import HEADS
from iseg.models import parse_model_name

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"
EXPERIMENTS = sorted(
    p for p in CONFIGS.rglob("*.cfg")
    if p.parent.name not in ("common", "datasets", "schedules", "text")  # text: test_text_train
)
ZOO = ("pascal_context", "cocostuff164k", "cityscapes", "ade20k")
OWN_RECIPE = ("hfgd_", "card_", "fcn_hrnetv2")  # rows with their own recipe (tested below)


def load(path):
    iflags.define_train_flags()
    argv = ["train.py", f"--flagfile={path}"]
    flags.FLAGS.unparse_flags()
    flags.FLAGS(iflags.expand_flagfiles(argv))
    return iflags.config_from_flags(argv)


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_experiment_resolves(path):
    cfg = load(path)
    if cfg.model:
        kwargs = parse_model_name(cfg.model)
    else:
        kwargs = {"head": cfg.head, "backbone": cfg.backbone}
        parse_model_name(f"{cfg.head}_{cfg.backbone}")
    get_dataset_spec(cfg.dataset)
    assert cfg.model_dir == f"runs/{path.stem}"
    assert cfg.car == (path.stem.endswith("_car") or "_car_" in path.stem), path
    # each experiment folder is one dataset (demo: the synthetic shapes), also under semi/
    folder = next(p for p in path.relative_to(CONFIGS).parts[:-1] if p != "semi")
    assert cfg.dataset == {"demo": "shapes", "voc": "voc2012"}.get(folder, folder), path
    assert kwargs["head"] in HEADS and kwargs["backbone"] in BACKBONES, path


@pytest.mark.parametrize("dataset", ZOO)
def test_zoo_rows_use_the_published_recipe(dataset):
    rows = sorted((CONFIGS / dataset).glob("*.cfg"))
    stems = {p.stem for p in rows}
    for base in ("fcn_r50_d8", "nl_r50_d8", "deeplabv3_r50_d8", "caa_r101_d8",
                 "caa_convnext_l_jpu"):
        assert {base, base + "_car"} <= stems, (dataset, base)
    for path in rows:
        if "adam" in path.stem or path.stem.startswith(OWN_RECIPE):
            continue
        cfg = load(path)
        assert (cfg.optimizer, cfg.lr, cfg.schedule, cfg.steps, cfg.batch_size, cfg.l2) == (
            "sgd", 0.01, "poly", 30000, 16, 1e-4
        ), path
        assert cfg.sync_bn and cfg.backbone_options["bn_momentum"] == 0.9997, path
        assert cfg.head_options == {"bn_momentum": 0.9997, "bn_epsilon": 1e-3, "dropout": 0.0,
                                    "kernel_initializer": "glorot_uniform"}, path


def test_nested_relative_flagfile_from_another_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load(CONFIGS / "pascal_context" / "nl_r50_d8_car.cfg")
    assert cfg.model == "nl_resnet50_d8" and cfg.car and cfg.dataset == "pascal_context"
    assert cfg.crop_size == (513, 513)


@pytest.mark.parametrize("dataset", ZOO)
def test_hfgd_card_rows(dataset):
    for head in ("hfgd", "card"):
        for short in ("convnext_t", "convnext_b", "convnext_l", "swin_t", "swin_b"):
            cfg = load(CONFIGS / dataset / f"{head}_{short}.cfg")
            assert cfg.model.startswith(f"{head}_") and cfg.optimizer == "adamw"
            assert cfg.backbone_options["out_norms"] is True and not cfg.car
            assert cfg.aux_weight == 0.0
    # CARD is trained with CAR: the zoo name turns it on
    assert parse_model_name(load(CONFIGS / dataset / "card_convnext_t.cfg").model)["car"] == {}


def test_camvid_rows_share_the_protocol():
    """Every CamVid row trains on the 240x180 data with the one protocol schedule."""
    rows = sorted((CONFIGS / "camvid").glob("*.cfg"))
    assert len(rows) == 10
    schedule = ("optimizer", "lr", "end_lr", "schedule", "poly_power", "steps", "batch_size",
                "l2", "weight_decay", "crop_size", "min_scale", "max_scale", "eval_every",
                "checkpoint_every", "data_dir", "aux_weight")
    shared = {tuple(getattr(load(p), k) for k in schedule) for p in rows}
    assert len(shared) == 1, shared
    cfg = load(rows[0])
    assert cfg.data_dir.endswith("camvid_240x180") and cfg.crop_size == (144, 192)
    # every evaluated checkpoint is kept, so the best one can be kept
    assert cfg.keep_checkpoints >= cfg.steps // cfg.eval_every
    assert {p.stem for p in rows if load(p).sar} == {"fcn_r18_d8_sar"}


@pytest.mark.parametrize("dataset,steps,lr,l2,batch", [
    ("ade20k", 160000, 0.01, 2.5e-4, 16),
    ("cityscapes", 80000, 0.01, 2.5e-4, 8),
    ("pascal_context", 40000, 0.004, 5e-5, 16),
])
def test_sar_rows_use_the_published_recipe(dataset, steps, lr, l2, batch):
    base = load(CONFIGS / dataset / "fcn_hrnetv2_w48.cfg")
    sar = load(CONFIGS / dataset / "fcn_hrnetv2_w48_sar.cfg")
    assert not base.sar and sar.sar and sar.sar_options == {}
    for cfg in (base, sar):
        assert (cfg.head, cfg.backbone, cfg.optimizer, cfg.lr, cfg.end_lr, cfg.steps,
                cfg.batch_size, cfg.l2) == ("fcn", "hrnetv2_w48", "sgd", lr, 1e-4, steps, batch, l2)
        assert cfg.head_options == dict(variant="mmseg", channels=720, num_convs=1,
                                        kernel_size=1, concat_input=False, dropout=0.0)
        assert cfg.aux_weight == 0.0 and not cfg.align_corners
    for stem in ("fcn_r50_d8", "deeplabv3_r50_d8", "nl_r50_d8"):
        cfg = load(CONFIGS / dataset / f"{stem}_sar.cfg")
        assert cfg.sar and cfg.lr == load(CONFIGS / dataset / f"{stem}.cfg").lr


def test_unimatch_rows_use_the_published_recipe():
    rows = sorted((CONFIGS / "semi").glob("*/unimatch_*.cfg"))
    assert len(rows) == 9
    for path in rows:
        cfg = load(path)
        voc = path.parent.name == "voc"
        partition = path.stem.split("_", 2)[2]
        assert cfg.semi == "unimatch" and cfg.optimizer == "sgd" and cfg.aux_weight == 0.0
        assert cfg.labeled_list.endswith(f"/{partition}/labeled.txt"), path
        assert cfg.unlabeled_list.endswith(f"/{partition}/unlabeled.txt"), path
        assert (cfg.crop_size, cfg.lr, cfg.semi_options["threshold"]) == (
            ((321, 321), 0.001, 0.95) if voc else ((801, 801), 0.005, 0.0)), path
        assert cfg.model == ("deeplabv3plus_resnet101_d16" if voc else
                             "deeplabv3plus_resnet50_d16"), path
        assert cfg.unlabeled_split == ("train_aug" if voc else None), path
        assert (cfg.batch_size, cfg.unlabeled_batch_size, cfg.l2) == (8, 8, 5e-5), path


def _published_steps(epochs, unlabeled, gpus, per_gpu):
    """Epochs of DistributedSampler + drop_last iterations over the unlabeled set."""
    return epochs * (-(-unlabeled // gpus) // per_gpu)


def test_corrmatch_rows_use_the_published_recipe():
    rows = sorted((CONFIGS / "semi").glob("*/corrmatch_*.cfg"))
    assert len(rows) == 9
    sizes = {"92": 92, "183": 183, "366": 366, "732": 732, "1464": 1464,
             "1_16": 186, "1_8": 372, "1_4": 744, "1_2": 1488}
    for path in rows:
        cfg = load(path)
        voc = path.parent.name == "voc"
        partition = path.stem.split("_", 2)[2]
        assert cfg.semi == "corrmatch" and cfg.semi_options == {"thresh_init": 0.85}, path
        assert cfg.model == "deeplabv3plus_resnet101_d8" and cfg.aux_weight == 0.0, path
        assert cfg.labeled_list.endswith(f"/{partition}/labeled.txt"), path
        assert cfg.unlabeled_list.endswith(f"/{partition}/unlabeled.txt"), path
        assert (cfg.crop_size, cfg.lr, cfg.batch_size, cfg.unlabeled_batch_size) == (
            ((321, 321), 0.001, 16, 16) if voc else ((801, 801), 0.005, 8, 8)), path
        assert (cfg.ohem_thresh, cfg.ohem_min_kept) == ((None, 100000) if voc else
                                                        (0.7, 100000)), path
        total = 10582 if voc else 2975
        assert cfg.steps == _published_steps(80 if voc else 240, total - sizes[partition], 4,
                                             4 if voc else 2), path


def test_cwbass_rows_use_the_published_recipe():
    rows = sorted((CONFIGS / "semi").glob("*/cwbass_*.cfg"))
    assert [f"{p.parent.name}/{p.stem}" for p in rows] == [
        "cityscapes/cwbass_r50_1_30", "cityscapes/cwbass_r50_1_4", "voc/cwbass_r50_1_4"]
    for path, labeled in zip(rows, (100, 744, 2645)):
        cfg = load(path)
        voc = path.parent.name == "voc"
        epochs, total = (80, 10582) if voc else (240, 2975)
        iters = max(labeled // 16, (total - labeled) // 16)
        assert cfg.semi == "cwbass" and cfg.semi_options == {"ramp_steps": 5 * iters}, path
        assert cfg.model == "deeplabv3plus_resnet50_d16" and cfg.ohem_thresh is None, path
        assert (cfg.batch_size, cfg.unlabeled_batch_size, cfg.steps) == (16, 16, epochs * iters)
        assert (cfg.crop_size, cfg.lr) == (((321, 321), 0.001) if voc else
                                           ((721, 721), 0.004)), path
        # ST++'s layout of the lists CW-BASS's README names: <dataset>/<partition>/split_0/
        assert cfg.labeled_list.endswith("/split_0/labeled.txt"), path
        assert cfg.unlabeled_list.endswith("/split_0/unlabeled.txt"), path


# Output stride of each method's published numbers (SEMI.md): ASPP 6/12/18 at OS16, 12/24/36
# at OS8; and the methods whose official code trains the head at 10x the backbone's rate (on
# VOC; CW-BASS, after ST++, on both datasets; CPS passes one rate).
SEMI_OUTPUT_STRIDE = {"unimatch": 16, "augseg": 16, "cps": 16, "cwbass": 16, "corrmatch": 8,
                      "imas": 8}
SEMI_HEAD_X10 = {"voc": {"unimatch", "corrmatch", "augseg", "imas", "cwbass"},
                 "cityscapes": {"cwbass"}}
SEMI_ROWS = sorted((CONFIGS / "semi").glob("*/*.cfg"))


@pytest.mark.parametrize("path", SEMI_ROWS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_semi_rows_use_the_methods_aspp_rates_and_head_learning_rate(path):
    import inspect

    from iseg.heads.deeplabv3 import aspp_rates

    cfg = load(path)
    kwargs = parse_model_name(cfg.model)
    head_options = {**kwargs.get("head_options", {}), **cfg.head_options}
    default_os = inspect.signature(HEADS.get(kwargs["head"])).parameters["output_stride"].default
    rates = aspp_rates(head_options.get("output_stride", default_os), head_options.get("rates"))
    os_ = SEMI_OUTPUT_STRIDE[cfg.semi]
    assert rates == {16: (6, 12, 18), 8: (12, 24, 36)}[os_], path
    assert kwargs["backbone"].endswith(f"_d{os_}"), path
    x10 = cfg.semi in SEMI_HEAD_X10[path.parent.name]
    assert cfg.head_lr_multiplier == (10.0 if x10 else 1.0), path
    assert "not available" not in path.read_text(), path


def test_voc_blended_rows_read_labeled_images_from_train_aug():
    """The 1/16, 1/8, 1/4 lists draw labeled images from the 10,582 train_aug images; the
    92 ... 1464 lists from the 1,464 of train (SEMI.md, splits)."""
    blended = []
    for path in SEMI_ROWS:
        cfg = load(path)
        partition = cfg.labeled_list.split("/")[3]
        voc_blended = path.parent.name == "voc" and partition.startswith("1_")
        assert cfg.labeled_split == ("train_aug" if voc_blended else "train"), path
        assert cfg.unlabeled_split == ("train_aug" if path.parent.name == "voc" else None), path
        blended += [path.stem] if voc_blended else []
    assert len(blended) == 10 and {s.split("_")[0] for s in blended} == {
        "augseg", "cps", "imas", "cwbass"}


def test_semi_rows_cover_every_method():
    assert {load(p).semi for p in SEMI_ROWS} == set(SEMI_OUTPUT_STRIDE)
