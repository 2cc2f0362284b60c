"""`TrainConfig`: every setting of a training / evaluation run (the CLI fills it from
flags), and the helpers that turn it into a model, dataset metadata and datasets."""

import dataclasses
import json
import os

from iseg.training.errors import ConfigError


@dataclasses.dataclass
class TrainConfig:
    # model
    model: str = None
    head: str = None
    backbone: str = None
    backbone_weights: str = None
    backbone_options: dict = dataclasses.field(default_factory=dict)
    head_options: dict = dataclasses.field(default_factory=dict)
    aux_weight: float = 0.4
    car: bool = False
    car_options: dict = dataclasses.field(default_factory=dict)
    loss_reduction: str = "valid_mean"
    ohem_thresh: float = None
    ohem_min_kept: int = 100000
    align_corners: bool = True
    # data
    dataset: str = None
    data_dir: str = None
    model_dir: str = "runs/default"
    crop_size: tuple = (513, 513)
    min_scale: float = 0.5
    max_scale: float = 2.0
    scale_step: float = 0.25
    flip: bool = True
    brightness: bool = True
    photometric: bool = False
    resample: str = "auto"  # training crops resampled on: auto | host | device
    shuffle_buffer: int = 1000
    seed: int = 0
    deterministic: bool = False
    # optimisation
    batch_size: int = 16
    steps: int = 30000
    optimizer: str = "sgd"
    lr: float = 0.01
    end_lr: float = 0.0
    schedule: str = "poly"
    poly_power: float = 0.9
    warmup_steps: int = 0
    warmup_ratio: float = 1e-6
    momentum: float = 0.9
    nesterov: bool = False
    beta_1: float = 0.9
    beta_2: float = 0.999
    weight_decay: float = 0.0
    l2: float = 0.0
    layer_decay: float = None
    clip_norm: float = None
    grad_accum_steps: int = 1
    mixed_precision: str = "none"
    sync_bn: bool = True
    strategy: str = "auto"
    tpu: str = None
    # bookkeeping
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    checkpoint_input: bool = True
    eval_every: int = 0
    log_every: int = 10
    num_summary_images: int = 4
    evaluate_at_end: bool = True
    export_at_end: bool = False
    overlays_at_end: int = 0
    progress: bool = True
    # evaluation
    eval_split: str = "val"
    eval_mode: str = "whole"
    eval_crop_size: tuple = None
    eval_stride_ratio: float = 2.0 / 3.0
    eval_scales: tuple = (1.0,)
    eval_flip: bool = False
    eval_batch_size: int = 1
    eval_steps: int = None

    def to_json(self):
        return json.dumps(dataclasses.asdict(self), indent=1, default=list)


@dataclasses.dataclass
class DatasetMeta:
    num_classes: int
    class_names: list
    palette: list
    ignore_label: int = 255
    name: str = None


def dataset_meta(cfg):
    """Classes, palette and ignore label: from `<data_dir>/dataset_info.json`, else from
    the named dataset spec."""
    info = None
    if cfg.data_dir and os.path.isfile(os.path.join(cfg.data_dir, "dataset_info.json")):
        from iseg.datasets import load_dataset_info
        info = load_dataset_info(cfg.data_dir)
    if info is None and cfg.dataset:
        from iseg.datasets import get_dataset_spec
        try:
            info = get_dataset_spec(cfg.dataset).to_info()
        except ValueError as e:
            raise ConfigError(str(e)) from None
    if info is None:
        if cfg.data_dir and not os.path.isdir(cfg.data_dir):
            raise ConfigError(f"--data_dir={cfg.data_dir} does not exist")
        raise ConfigError(f"no dataset_info.json in --data_dir={cfg.data_dir} and no "
                          "--dataset given")
    from iseg.datasets.specs import voc_colormap
    k = int(info["num_classes"])
    return DatasetMeta(
        num_classes=k,
        class_names=list(info.get("class_names") or [str(i) for i in range(k)]),
        palette=[tuple(c) for c in (info.get("palette") or voc_colormap(k))],
        ignore_label=int(info.get("ignore_label", 255)),
        name=info.get("dataset", cfg.dataset),
    )


def model_options(cfg, meta):
    """Keyword options of `build_model` / `build_model_from_name` from the config."""
    opts = dict(aux_weight=cfg.aux_weight, ignore_label=meta.ignore_label,
                loss_reduction=cfg.loss_reduction, align_corners=cfg.align_corners,
                l2_weight_decay=cfg.l2)
    if cfg.backbone_options:
        opts["backbone_options"] = dict(cfg.backbone_options)
    if cfg.head_options:
        opts["head_options"] = dict(cfg.head_options)
    if cfg.backbone_weights:
        opts["backbone_weights"] = cfg.backbone_weights
    if cfg.car:
        opts["car"] = dict(cfg.car_options)
    if cfg.ohem_thresh is not None:
        opts["ohem"] = dict(thresh=cfg.ohem_thresh, min_kept=cfg.ohem_min_kept)
    return opts


def build_model_from_config(cfg, meta):
    """The SegmentationModel named by `--model` (or `--head` + `--backbone`)."""
    from iseg import models

    opts = model_options(cfg, meta)
    if cfg.model:
        try:
            models.parse_model_name(cfg.model)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        return models.build_model_from_name(cfg.model, meta.num_classes, **opts)
    if not (cfg.head and cfg.backbone):
        raise ConfigError("give --model, or both --head and --backbone")
    from iseg.backbones import BACKBONES
    from iseg.heads import HEADS
    for registry, name in ((HEADS, cfg.head), (BACKBONES, cfg.backbone)):
        if name not in registry:
            try:
                registry.get(name)
            except ValueError as e:
                raise ConfigError(str(e)) from None
    return models.build_model(cfg.head, cfg.backbone, meta.num_classes, **opts)


def pipeline_options(cfg):
    return dict(scale_range=(cfg.min_scale, cfg.max_scale), scale_step=cfg.scale_step,
                flip=cfg.flip, brightness=cfg.brightness, photometric=cfg.photometric)


def make_train_dataset_fn(cfg, normalization, resample="host"):
    """`fn(input_context, seed) -> tf.data.Dataset` of per-replica training batches
    (with ``resample="device"`` batches of views, see `build_dataset`)."""
    from iseg.datasets.pipeline import build_dataset

    def fn(input_context, seed):
        # build_dataset divides the global batch by the replicas of `input_context`
        return build_dataset(
            cfg.data_dir, "train", training=True, batch_size=cfg.batch_size,
            crop_size=tuple(cfg.crop_size), normalization=normalization, seed=seed,
            # element order is always deterministic (cheap) so seeded runs repeat; the
            # --deterministic flag adds deterministic TF ops (slower on GPUs)
            deterministic=True, input_context=input_context, repeat=True,
            shuffle_buffer=cfg.shuffle_buffer, resample=resample, **pipeline_options(cfg))
    return fn


def make_eval_dataset(cfg, normalization, split=None):
    from iseg.datasets.pipeline import build_dataset

    return build_dataset(
        cfg.data_dir, split or cfg.eval_split, training=False,
        batch_size=cfg.eval_batch_size, crop_size=tuple(cfg.crop_size),
        normalization=normalization, seed=cfg.seed, deterministic=True, repeat=False)


def write_run_config(model_dir, cfg, meta, model):
    """`<model_dir>/run_config.json`: config, dataset metadata and the model's config, so
    evaluate / export / predict can rebuild the model from a model_dir."""
    import keras

    os.makedirs(model_dir, exist_ok=True)
    record = dict(config=dataclasses.asdict(cfg), dataset=dataclasses.asdict(meta),
                  model=keras.saving.serialize_keras_object(model),
                  normalization=getattr(model, "normalization", "minus_one_to_one"))
    path = os.path.join(model_dir, "run_config.json")
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(record, f, indent=1, default=list)
    os.replace(tmp, path)
    return path


def read_run_config(model_dir):
    path = os.path.join(model_dir, "run_config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: {model_dir} is not a training model_dir")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def rebuild_model(record):
    """Rebuild (without weights) the model described by a run_config.json record, in
    float32 whatever the training precision (the record's layers are rebuilt under the
    global policy; this keeps the model's own input cast consistent with them)."""
    import keras

    config = dict(record["model"], config=dict(record["model"]["config"], dtype="float32"))
    model = keras.saving.deserialize_keras_object(config)
    build_for_inference(model)
    return model


def build_for_inference(model):
    if not model.built:
        model.build((None, None, None, 3))
    return model
