"""`TrainConfig`: every setting of a training / evaluation run, and the helpers that turn
it into a model, dataset metadata and datasets.

Each field is declared once, with its default and help text; the command-line flags are
generated from the fields (`iseg.cli.flags.define_train_flags`): bool/int/float/str fields
become flags of that type, fields with `choices` enum flags, tuples comma-separated lists,
dicts `key=value,...` strings.
"""

import dataclasses
import json
import os

from iseg.errors import ConfigError
from iseg.semi import methods as semi_methods


def option(default, help_text, choices=None):
    """A config field with its help text (and enum `choices`), from which the flag is made."""
    meta = {"help": help_text, "choices": choices}
    if isinstance(default, dict):
        return dataclasses.field(default_factory=lambda: dict(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


@dataclasses.dataclass
class TrainConfig:
    # model
    model: str = option(None, "Zoo model name (e.g. deeplabv3_resnet50_d8, demo_tiny); or "
                        "give --head and --backbone.")
    head: str = option(None, "Head name (when --model is not given).")
    backbone: str = option(None, "Backbone name (when --model is not given).")
    backbone_weights: str = option(None, "None, 'imagenet' or a weight file for the backbone.")
    backbone_options: dict = option({}, "Backbone options, key=value,... (Python literals).")
    head_options: dict = option({}, "Head options, key=value,... (Python literals).")
    aux_weight: float = option(0.4, "Aux FCN head loss weight; 0 disables the aux head.")
    aux_options: dict = option({}, "Aux head (fcn_aux) options, key=value,... (channels, "
                               "dropout, in_key, bn_epsilon, kernel_initializer, ...).")
    car: bool = option(False, "Add the CAR regularizers (class-aware losses) to the head.")
    car_options: dict = option({}, "CAR options, key=value,... (filters, pooling_rates, "
                               "apply_end_conv, intra_loss_rate, inter_loss_rate, "
                               "use_ema_centers, ...).")
    sar: bool = option(False, "Add SAR (semantic anchor regularization, training only).")
    sar_options: dict = option({}, "SAR options, key=value,... (trade_off, trade_off_ce, "
                               "filter_conf, update_conf, momentum, seed).")
    neck: str = option("none", "Neck between backbone and head: none, or sdn (the semantic "
                       "diffusion neck on each endpoint the head reads).", ["none", "sdn"])
    neck_options: dict = option({}, "Neck options, key=value,... (sdn: guidance=deeper|self, "
                                "guidance_power, sdc_kernel_size, difference_init, "
                                "trainable_difference, keys, ...).")
    loss_reduction: str = option("valid_mean", "Cross-entropy denominator: valid pixels "
                                 "(mmseg) or all pixels (original code).",
                                 ["valid_mean", "all_pixels"])
    ohem_thresh: float = option(None, "OHEM probability threshold (None: no OHEM).")
    ohem_min_kept: int = option(100000, "OHEM minimum number of kept pixels.")
    align_corners: bool = option(True, "Align-corners resizing of logits and labels.")
    # data
    dataset: str = option(None, "Dataset name (see iseg.datasets); default: from "
                          "dataset_info.json in --data_dir.")
    data_dir: str = option(None, "Folder of a converted dataset (TFRecords + "
                           "dataset_info.json); a relative path is resolved against "
                           "--data_root.")
    model_dir: str = option("runs/default", "Where checkpoints, logs, results and exports "
                            "go (command line: default runs/<config name>).")
    checkpoint: str = option(None, "Checkpoint to start from (training resumes its step, "
                             "optimizer and input position; evaluate and export load its "
                             "weights). Default: the newest readable one in --model_dir.")
    crop_size: tuple = option((513, 513), "Training crop (and sliding window) height,width.")
    min_scale: float = option(0.5, "Random scale augmentation: minimum.")
    max_scale: float = option(2.0, "Random scale augmentation: maximum.")
    scale_step: float = option(0.25, "Random scale augmentation: step (0 = continuous).")
    flip: bool = option(True, "Random horizontal flip.")
    brightness: bool = option(True, "Random brightness (p 0.5, max delta 32).")
    photometric: bool = option(False, "Photometric distortion (contrast, saturation).")
    resample: str = option(
        "auto", "Where training crops are resampled, colour-augmented and normalised: "
        "'device' in the training step (the input pipeline then only decodes the crop "
        "windows), 'host' in tf.data; 'auto' is device on GPUs, host on CPUs and TPUs.",
        ["auto", "host", "device"])
    shuffle_buffer: int = option(1000, "Shuffle buffer (examples).")
    skip_corrupt: bool = option(False, "Drop unreadable records and records with invalid "
                                "labels (each drop logged) instead of stopping.")
    seed: int = option(0, "Random seed (model init and data order).")
    deterministic: bool = option(False, "Deterministic TF ops (slower on GPUs). The input "
                                 "order is always deterministic for a given --seed.")
    # optimisation
    batch_size: int = option(16, "GLOBAL batch size (split over replicas).")
    steps: int = option(30000, "Number of optimizer steps.")
    optimizer: str = option("sgd", "Optimizer.", ["sgd", "adam", "adamw"])
    lr: float = option(0.01, "Base learning rate.")
    end_lr: float = option(0.0, "Final learning rate of the poly/cosine schedule.")
    schedule: str = option("poly", "Learning-rate schedule.", ["poly", "cosine", "constant"])
    poly_power: float = option(0.9, "Power of the poly schedule.")
    warmup_steps: int = option(0, "Linear warm-up steps.")
    warmup_ratio: float = option(1e-6, "Warm-up starts at lr * warmup_ratio.")
    momentum: float = option(0.9, "SGD momentum.")
    nesterov: bool = option(False, "SGD Nesterov momentum.")
    beta_1: float = option(0.9, "Adam/AdamW beta_1.")
    beta_2: float = option(0.999, "Adam/AdamW beta_2.")
    weight_decay: float = option(0.0, "Decoupled weight decay (norm, bias and "
                                 "position-bias weights excluded).")
    l2: float = option(0.0, "L2 penalty on every conv/dense kernel added to the loss (the "
                       "original recipe, e.g. 1e-4).")
    layer_decay: float = option(None, "Layer-wise learning-rate decay (ConvNeXt/Swin), "
                                "e.g. 0.9.")
    head_lr_multiplier: float = option(
        1.0, "Every trainable variable outside the backbone (head, aux head, CAR, the peer's "
        "head, semi-supervised method layers) trains at lr x this, e.g. 10 (times "
        "--layer_decay's scale when both are set).")
    clip_norm: float = option(None, "Clip gradients to this global norm.")
    grad_accum_steps: int = option(1, "Accumulate gradients over this many batches.")
    mixed_precision: str = option("none", "Mixed precision.", ["none", "float16", "bfloat16"])
    sync_bn: bool = option(True, "Synchronise batch-norm statistics over replicas.")
    strategy: str = option("auto", "Distribution strategy.",
                           ["auto", "mirrored", "multi_worker", "tpu", "one_device"])
    tpu: str = option(None, "TPU name or address (strategy=tpu).")
    engine: str = option(
        "auto", "Training engine: 'loop' (the TensorFlow loop: strategies, TPUs, device "
        "resampling) or 'fit' (Keras model.fit over an input path without TensorFlow, on "
        "any Keras backend); 'auto' is loop on the TensorFlow backend, fit on JAX and "
        "PyTorch.", ["auto", "loop", "fit"])
    # bookkeeping
    checkpoint_every: int = option(1000, "Save a checkpoint every N steps.")
    keep_checkpoints: int = option(3, "Keep the last K checkpoints.")
    checkpoint_input: bool = option(True, "Save the input iterator position in checkpoints.")
    eval_every: int = option(0, "Evaluate every N steps (0: only at the end).")
    log_every: int = option(10, "Write TensorBoard scalars every N steps.")
    num_summary_images: int = option(4, "Images in the evaluation image summaries.")
    evaluate_at_end: bool = option(True, "Evaluate on --eval_split after training.")
    export_at_end: bool = option(False, "Write a SavedModel and a .keras file after "
                                 "training.")
    overlays_at_end: int = option(0, "Write this many prediction overlays after training.")
    progress: bool = option(True, "Show progress bars (images/s, ETA) on a terminal; "
                            "--noprogress turns them off.")
    # evaluation
    eval_split: str = option("val", "Split used for evaluation.")
    eval_mode: str = option("whole", "Whole-image or sliding-window inference.",
                            ["whole", "slide"])
    eval_crop_size: tuple = option(None, "Sliding window size (default --crop_size).")
    eval_stride_ratio: float = option(2.0 / 3.0, "Sliding window stride / window size.")
    eval_scales: tuple = option((1.0,), "Inference scales, e.g. 0.5,0.75,1.0,1.25,1.5,1.75.")
    eval_flip: bool = option(False, "Average logits with the horizontally flipped input.")
    eval_batch_size: int = option(1, "Evaluation batch size.")
    eval_steps: int = option(None, "Evaluate only this many batches (None: whole split).")
    # semi-supervised training (docs/semi_supervised.md)
    semi: str = option("none", "Semi-supervised method ('none': supervised training).",
                       ["none", *semi_methods.names()])
    semi_options: dict = option({}, "Options of the --semi method, key=value,... (Python "
                                "literals; see docs/semi_supervised.md).")
    labeled_split: str = option("train", "Split the labeled examples come from: the ids "
                                "--labeled_list names, or the --labeled_fraction draw.")
    labeled_fraction: float = option(None, "Seeded random partition (--seed): this fraction "
                                     "of --labeled_split is labeled, the rest unlabeled.")
    labeled_list: str = option(None, "File listing the labeled examples (UniMatch / CPS / "
                               "AugSeg list format, or one id a line; matched by file stem).")
    unlabeled_list: str = option(None, "File listing the unlabeled examples (same formats, "
                                 "ids of --unlabeled_split; no id of --labeled_list); "
                                 "default: every example of --labeled_split not labeled.")
    unlabeled_split: str = option(None, "Split read as unlabeled data: all of it, or the "
                                  "examples --unlabeled_list names (default: the unlabeled "
                                  "part of --labeled_split).")
    unlabeled_batch_size: int = option(None, "GLOBAL unlabeled batch size (default: "
                                       "--batch_size).")

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


def check_config(cfg):
    """A ConfigError naming the flag for settings no run can train with."""
    crop = tuple(cfg.crop_size or ())
    if len(crop) != 2 or min(crop) <= 0:
        raise ConfigError(f"--crop_size={','.join(map(str, crop))}: the crop height and "
                          "width must be positive")
    for name in ("steps", "batch_size"):
        if getattr(cfg, name) <= 0:
            raise ConfigError(f"--{name}={getattr(cfg, name)}: must be positive")
    if cfg.head_lr_multiplier <= 0:
        raise ConfigError(f"--head_lr_multiplier={cfg.head_lr_multiplier}: must be positive")
    check_semi(cfg)


def check_semi(cfg):
    """A ConfigError for semi-supervised settings that do not fit together."""
    if cfg.semi == "none":
        given = [f"--{n}" for n in ("semi_options", "labeled_fraction", "labeled_list",
                                    "unlabeled_list", "unlabeled_split",
                                    "unlabeled_batch_size") if getattr(cfg, n)]
        if cfg.labeled_split != TrainConfig.labeled_split:
            given.append("--labeled_split")
        if given:
            raise ConfigError(f"{given[0]} given without --semi (a semi-supervised method)")
        return
    semi_methods.build_method(cfg.semi, cfg.semi_options)  # unknown name / option
    fraction = cfg.labeled_fraction
    if fraction is not None and not 0.0 < fraction < 1.0:
        raise ConfigError(f"--labeled_fraction={fraction}: must be in (0, 1)")
    sources = [n for n in ("labeled_fraction", "labeled_list") if getattr(cfg, n) is not None]
    if len(sources) != 1:
        raise ConfigError(f"--semi={cfg.semi} needs exactly one of --labeled_fraction and "
                          f"--labeled_list (given: {', '.join(sources) or 'neither'})")
    if cfg.unlabeled_list and not cfg.labeled_list:
        raise ConfigError("--unlabeled_list needs --labeled_list")
    if cfg.unlabeled_batch_size is not None and cfg.unlabeled_batch_size <= 0:
        raise ConfigError(f"--unlabeled_batch_size={cfg.unlabeled_batch_size}: must be "
                          "positive")


def check_crop_size(cfg, model):
    """A ConfigError when a side of `--crop_size` is below the model's output stride (the
    coarsest backbone features would be smaller than one pixel)."""
    import keras

    backbone = getattr(model, "backbone", None)
    if backbone is None:
        return
    size = 256
    features = backbone.compute_output_spec(keras.KerasTensor((1, size, size, 3)))
    stride = size // min(t.shape[1] for t in keras.tree.flatten(features) if len(t.shape) == 4)
    if min(cfg.crop_size) < stride:
        raise ConfigError(
            f"--crop_size={','.join(map(str, cfg.crop_size))} is smaller than the model's "
            f"output stride {stride} (its coarsest features would be smaller than one "
            f"pixel); use at least {stride},{stride}")


def _check_head_options(head, options):
    from iseg.heads import HEADS

    valid = set(HEADS.get(head)(num_classes=2).get_config())
    valid -= {"name", "trainable", "dtype", "num_classes"}
    unknown = sorted(set(options) - valid)
    if unknown:
        raise ConfigError(f"--head_options: unknown option {unknown[0]!r} for head "
                          f"{head!r}. Valid options: {', '.join(sorted(valid))}")


def model_options(cfg, meta):
    """Keyword options of `build_model` / `build_model_from_name` from the config."""
    opts = dict(aux_weight=cfg.aux_weight, ignore_label=meta.ignore_label,
                loss_reduction=cfg.loss_reduction, align_corners=cfg.align_corners,
                l2_weight_decay=cfg.l2)
    if cfg.backbone_options:
        opts["backbone_options"] = dict(cfg.backbone_options)
    if cfg.head_options:
        opts["head_options"] = dict(cfg.head_options)
    if cfg.aux_options:
        opts["aux_options"] = dict(cfg.aux_options)
    if cfg.backbone_weights:
        opts["backbone_weights"] = cfg.backbone_weights
    if cfg.car:
        from iseg.losses.car import CAROptions

        try:
            opts["car"] = CAROptions.create(cfg.car_options)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"--car_options: {e}") from None
    elif cfg.car_options:
        raise ConfigError("--car_options given without --car (the one CAR switch)")
    if cfg.sar:
        from iseg.losses.sar import check_sar_options

        try:
            opts["sar"] = check_sar_options(cfg.sar_options)
        except ValueError as e:
            raise ConfigError(f"--sar_options: {e}") from None
    elif cfg.sar_options:
        raise ConfigError("--sar_options given without --sar=true")
    if cfg.neck != "none":
        from iseg.layers.sdn import check_neck_options

        try:
            opts["neck_options"] = check_neck_options(cfg.neck_options)
        except ValueError as e:
            raise ConfigError(f"--neck_options: {e}") from None
        opts["neck"] = cfg.neck
    elif cfg.neck_options:
        raise ConfigError("--neck_options given without --neck=sdn")
    if cfg.ohem_thresh is not None:
        opts["ohem"] = dict(thresh=cfg.ohem_thresh, min_kept=cfg.ohem_min_kept)
    return opts


def build_model_from_config(cfg, meta):
    """The SegmentationModel named by `--model` (or `--head` + `--backbone`)."""
    from iseg import models

    opts = model_options(cfg, meta)
    if cfg.model:
        try:
            head = models.parse_model_name(cfg.model)["head"]
        except ValueError as e:
            raise ConfigError(str(e)) from None
        build, args = models.build_model_from_name, (cfg.model, meta.num_classes)
    else:
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
        head = cfg.head
        build, args = models.build_model, (cfg.head, cfg.backbone, meta.num_classes)
    try:
        return build(*args, **opts)
    except ValueError as e:
        if str(e).startswith("Unknown option ") and " for backbone " in str(e):
            raise ConfigError(f"--backbone_options: {e}") from None
        if str(e).startswith("Unrecognized keyword arguments"):  # Keras' check
            _check_head_options(head, cfg.head_options)  # (only here: it draws seeds)
        raise


PRECISION_POLICIES = {"none": "float32", "float16": "mixed_float16",
                      "bfloat16": "mixed_bfloat16"}


def optimizer_for(cfg, model, extra_variables=(), extra_backbone_variables=()):
    """The run's optimizer with its learning-rate schedule, prepared for `model` and
    `extra_variables` (weight decay exclusions, layer-wise and head rates -- the
    `extra_backbone_variables` among `extra_variables` at the backbone rate --, slots
    built); the same on every backend."""
    from iseg.training.optimizers import build_optimizer, prepare_optimizer
    from iseg.training.schedules import WarmupDecay

    accum = max(1, cfg.grad_accum_steps)
    schedule = WarmupDecay(cfg.lr, cfg.steps, cfg.schedule, end_lr=cfg.end_lr,
                           power=cfg.poly_power, warmup_steps=cfg.warmup_steps,
                           warmup_ratio=cfg.warmup_ratio, accum_steps=accum)
    optimizer = build_optimizer(
        cfg.optimizer, schedule, momentum=cfg.momentum, nesterov=cfg.nesterov,
        beta_1=cfg.beta_1, beta_2=cfg.beta_2, weight_decay=cfg.weight_decay,
        clip_norm=cfg.clip_norm, grad_accum_steps=accum, layer_decay=cfg.layer_decay,
        head_lr_multiplier=cfg.head_lr_multiplier, loss_scale=cfg.mixed_precision == "float16")
    return prepare_optimizer(optimizer, model, cfg.layer_decay, extra_variables,
                             cfg.head_lr_multiplier, extra_backbone_variables)


def augment_options(cfg):
    """The training views' `AugmentOptions` from the config."""
    from iseg.datasets.np_augment import AugmentOptions

    return AugmentOptions(scale_range=(cfg.min_scale, cfg.max_scale),
                          scale_step=cfg.scale_step, flip=cfg.flip,
                          brightness=cfg.brightness, photometric=cfg.photometric)


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
            shuffle_buffer=cfg.shuffle_buffer, resample=resample, augment=augment_options(cfg),
            skip_corrupt=cfg.skip_corrupt)
    return fn


def make_eval_dataset(cfg, normalization, split=None):
    from iseg.datasets.pipeline import build_dataset

    return build_dataset(
        cfg.data_dir, split or cfg.eval_split, training=False,
        batch_size=cfg.eval_batch_size, crop_size=tuple(cfg.crop_size),
        normalization=normalization, seed=cfg.seed, deterministic=True, repeat=False,
        skip_corrupt=cfg.skip_corrupt)


def write_run_config(model_dir, cfg, meta, model):
    """`<model_dir>/run_config.json`: config, dataset metadata and the model's config, so
    evaluate / export / predict can rebuild the model from a model_dir."""
    import keras

    from iseg.datasets.np_augment import input_normalization

    os.makedirs(model_dir, exist_ok=True)
    record = dict(config=dataclasses.asdict(cfg), dataset=dataclasses.asdict(meta),
                  model=keras.saving.serialize_keras_object(model),
                  normalization=input_normalization(model))
    path = os.path.join(model_dir, "run_config.json")
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(record, f, indent=1, default=list)
    os.replace(tmp, path)
    return path


def _flat(value, prefix=""):
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            out.update(_flat(item, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: value}


FIT_CHECKPOINT_DIR = "fit_checkpoints"  # the fit engine's checkpoints (iseg.training.fit)


def check_same_model(model_dir, model):
    """Refuse to resume a model_dir (one with checkpoints) whose run_config.json records a
    model other than `model`; the ConfigError names the settings that differ."""
    import keras

    path = os.path.join(model_dir, "run_config.json")
    if not (os.path.isfile(path) and (
            os.path.isfile(os.path.join(model_dir, "checkpoints", "checkpoint")) or
            os.path.isdir(os.path.join(model_dir, FIT_CHECKPOINT_DIR)))):
        return
    ignored = {"name", "dtype", "trainable"}  # not part of what the model computes
    ours = json.loads(json.dumps(keras.saving.serialize_keras_object(model), default=list))
    theirs = read_run_config(model_dir)["model"]
    ours, theirs = ({"class_name": m.get("class_name"), **{
        k: v for k, v in m.get("config", {}).items() if k not in ignored}}
        for m in (ours, theirs))
    ours, theirs = _flat(ours), _flat(theirs)
    diff = [f"{k}: {theirs.get(k, '(none)')!r} recorded, {ours.get(k, '(none)')!r} now"
            for k in sorted(set(ours) | set(theirs)) if ours.get(k) != theirs.get(k)]
    if diff:
        shown = "; ".join(diff[:6]) + (f"; (+{len(diff) - 6} more)" if len(diff) > 6 else "")
        raise ConfigError(
            f"--model_dir={model_dir} holds checkpoints of another model ({shown}); resume "
            "it with the flags it was trained with (see its run_config.json) or choose "
            "another --model_dir")


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

    import iseg.models  # noqa: F401  (registers the Keras classes the record names)

    config = dict(record["model"], config=dict(record["model"]["config"], dtype="float32"))
    model = keras.saving.deserialize_keras_object(config)
    build_for_inference(model)
    return model


def build_for_inference(model):
    if not model.built:
        model.build((None, None, None, 3))
    return model
