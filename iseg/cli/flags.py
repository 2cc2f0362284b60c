"""Command-line flags shared by `train.py`, `iseg.cli.evaluate`, `export` and `predict`.

Flag files: one flag per line, `#` or `//` comments, and `--flagfile=PATH` lines to nest
other files. absl resolves a nested relative `--flagfile` against the working directory;
here `expand_flagfiles` expands every flag file before absl sees argv, resolving a relative
path against the folder of the file that includes it (command-line paths: against the
working directory), so configs work from any working directory.
"""

import ast
import os
import sys

from absl import flags, logging

FLAGS = flags.FLAGS


class FlagFileError(ValueError):
    """A flag file that cannot be read (missing, or included recursively)."""


def _flagfile_arg(arg):
    for prefix in ("--flagfile=", "-flagfile="):
        if arg.startswith(prefix):
            return arg[len(prefix):]
    return None


def _read_flagfile(path, included_from, stack):
    shown = path if included_from is None else f"{path} (included from {included_from})"
    if not os.path.isfile(path):
        raise FlagFileError(f"flag file not found: {shown}")
    real = os.path.realpath(path)
    if real in stack:
        raise FlagFileError(f"flag file includes itself recursively: {shown}")
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith("#") or line.startswith("//"):
                continue
            nested = _flagfile_arg(line)
            if nested is not None:
                nested = os.path.expanduser(nested)
                if not os.path.isabs(nested):
                    nested = os.path.join(os.path.dirname(path), nested)
                out += _read_flagfile(os.path.normpath(nested), path, stack | {real})
            else:
                out.append(line)
    return out


def expand_flagfiles(argv):
    """argv with every `--flagfile=PATH` (nested ones too) replaced by the file's flags.

    Later flags override earlier ones (absl semantics), so a flag given on the command line
    after `--flagfile` wins over the file.
    """
    out = [argv[0]] if argv else []
    args = list(argv[1:])
    i = 0
    while i < len(args):
        arg = args[i]
        path = _flagfile_arg(arg)
        if path is None and arg in ("--flagfile", "-flagfile"):
            if i + 1 >= len(args):
                raise FlagFileError("--flagfile needs a path")
            path = args[i + 1]
            i += 1
        if path is not None:
            out += _read_flagfile(os.path.expanduser(path), None, frozenset())
        else:
            out.append(arg)
        i += 1
    return out


def config_name(argv):
    """The name of the first command-line flag file (`configs/x/y.cfg` -> `y`), or None."""
    for i, arg in enumerate(argv[1:], 1):
        path = _flagfile_arg(arg)
        if path is None and arg in ("--flagfile", "-flagfile") and i + 1 < len(argv):
            path = argv[i + 1]
        if path:
            return os.path.splitext(os.path.basename(path))[0]
    return None


def parse_flags(argv, program):
    """Expand flag files and parse argv into FLAGS; any problem exits with one line."""
    try:
        expanded = expand_flagfiles(argv)
        FLAGS(expanded)
    except (FlagFileError, flags.Error) as e:
        sys.stderr.write(f"{program}: error: {e}\n")
        sys.exit(2)
    return expanded


def parse_options(text, flag_name):
    """Parse `key=value,key=value` (values as Python literals, else strings) into a dict."""
    result = {}
    if not text:
        return result
    for item in _split_top_level(text):
        if "=" not in item:
            raise ValueError(f"--{flag_name}: expected key=value, got {item!r}")
        key, value = item.split("=", 1)
        try:
            result[key.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            result[key.strip()] = value.strip()
    return result


def _split_top_level(text):
    parts, depth, cur = [], 0, ""
    for ch in text:
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    if cur.strip():
        parts.append(cur)
    return parts


def _define_once(kind, name, default, *args, **kwargs):
    if name in FLAGS:
        return
    if kind == "enum":  # DEFINE_enum(name, default, enum_values, help)
        flags.DEFINE_enum(name, default, args[0], args[1], **kwargs)
    else:
        getattr(flags, f"DEFINE_{kind}")(name, default, args[0], **kwargs)


def define_common_flags():
    """Model, data and evaluation flags (read by every entry point)."""
    d = _define_once
    # model
    d("string", "model", None, "Zoo model name (e.g. deeplabv3_resnet50_d8, demo_tiny); "
      "or give --head and --backbone.")
    d("string", "head", None, "Head name (when --model is not given).")
    d("string", "backbone", None, "Backbone name (when --model is not given).")
    d("string", "backbone_weights", None, "None, 'imagenet' or a weight file for the backbone.")
    d("string", "backbone_options", "", "Backbone options, key=value,... (Python literals).")
    d("string", "head_options", "", "Head options, key=value,... (Python literals).")
    d("float", "aux_weight", 0.4, "Aux FCN head loss weight; 0 disables the aux head.")
    d("bool", "car", False, "Add the CAR regularizers (class-aware losses) to the head.")
    d("string", "car_options", "", "CAR options, key=value,... (filters, pooling_rates, "
      "apply_end_conv, intra_loss_rate, inter_loss_rate, use_ema_centers, ...).")
    d("enum", "loss_reduction", "valid_mean", ["valid_mean", "all_pixels"],
      "Cross-entropy denominator: valid pixels (mmseg) or all pixels (original code).")
    d("float", "ohem_thresh", None, "OHEM probability threshold (None: no OHEM).")
    d("integer", "ohem_min_kept", 100000, "OHEM minimum number of kept pixels.")
    d("bool", "align_corners", True, "Align-corners resizing of logits and labels.")
    # data
    d("string", "dataset", None, "Dataset name (see iseg.datasets); default: from "
      "dataset_info.json in --data_dir.")
    d("string", "data_dir", None, "Folder of a converted dataset (TFRecords + "
      "dataset_info.json).")
    d("string", "model_dir", None, "Where checkpoints, logs, results and exports go "
      "(default runs/<config name>).")
    d("list", "crop_size", ["513", "513"], "Training crop (and sliding window) height,width.")
    d("integer", "seed", 0, "Random seed (model init and data order).")
    d("bool", "deterministic", False, "Deterministic TF ops (slower on GPUs). The input "
      "order is always deterministic for a given --seed.")
    # evaluation
    d("string", "eval_split", "val", "Split used for evaluation.")
    d("enum", "eval_mode", "whole", ["whole", "slide"], "Whole-image or sliding-window "
      "inference.")
    d("list", "eval_crop_size", None, "Sliding window size (default --crop_size).")
    d("float", "eval_stride_ratio", 2.0 / 3.0, "Sliding window stride / window size.")
    d("list", "eval_scales", ["1.0"], "Inference scales, e.g. 0.5,0.75,1.0,1.25,1.5,1.75.")
    d("bool", "eval_flip", False, "Average logits with the horizontally flipped input.")
    d("integer", "eval_batch_size", 1, "Evaluation batch size.")
    d("integer", "eval_steps", None, "Evaluate only this many batches (None: whole split).")
    d("integer", "num_cpu_devices", 0, "Split the CPU into this many logical devices "
      "(to try distribution strategies without GPUs); 0 leaves it alone.")


def define_train_flags():
    define_common_flags()
    d = _define_once
    d("integer", "batch_size", 16, "GLOBAL batch size (split over replicas).")
    d("integer", "steps", 30000, "Number of optimizer steps.")
    d("float", "min_scale", 0.5, "Random scale augmentation: minimum.")
    d("float", "max_scale", 2.0, "Random scale augmentation: maximum.")
    d("float", "scale_step", 0.25, "Random scale augmentation: step (0 = continuous).")
    d("bool", "flip", True, "Random horizontal flip.")
    d("bool", "brightness", True, "Random brightness (p 0.5, max delta 32).")
    d("bool", "photometric", False, "Photometric distortion (contrast, saturation).")
    d("enum", "resample", "auto", ["auto", "host", "device"],
      "Where training crops are resampled, colour-augmented and normalised: 'device' in the "
      "training step (the input pipeline then only decodes the crop windows), 'host' in "
      "tf.data; 'auto' is device on GPUs, host on CPUs and TPUs.")
    d("integer", "shuffle_buffer", 1000, "Shuffle buffer (examples).")
    d("enum", "optimizer", "sgd", ["sgd", "adam", "adamw"], "Optimizer.")
    d("float", "lr", 0.01, "Base learning rate.")
    d("float", "end_lr", 0.0, "Final learning rate of the poly/cosine schedule.")
    d("enum", "schedule", "poly", ["poly", "cosine", "constant"], "Learning-rate schedule.")
    d("float", "poly_power", 0.9, "Power of the poly schedule.")
    d("integer", "warmup_steps", 0, "Linear warm-up steps.")
    d("float", "warmup_ratio", 1e-6, "Warm-up starts at lr * warmup_ratio.")
    d("float", "momentum", 0.9, "SGD momentum.")
    d("bool", "nesterov", False, "SGD Nesterov momentum.")
    d("float", "beta_1", 0.9, "Adam/AdamW beta_1.")
    d("float", "beta_2", 0.999, "Adam/AdamW beta_2.")
    d("float", "weight_decay", 0.0, "Decoupled weight decay (norm, bias and position-bias "
      "weights excluded).")
    d("float", "l2", 0.0, "L2 penalty on every conv/dense kernel added to the loss "
      "(the original recipe, e.g. 1e-4).")
    d("float", "layer_decay", None, "Layer-wise learning-rate decay (ConvNeXt/Swin), "
      "e.g. 0.9.")
    d("float", "clip_norm", None, "Clip gradients to this global norm.")
    d("integer", "grad_accum_steps", 1, "Accumulate gradients over this many batches.")
    d("enum", "mixed_precision", "none", ["none", "float16", "bfloat16"], "Mixed precision.")
    d("bool", "sync_bn", True, "Synchronise batch-norm statistics over replicas.")
    d("enum", "strategy", "auto", ["auto", "mirrored", "multi_worker", "tpu", "one_device"],
      "Distribution strategy.")
    d("string", "tpu", None, "TPU name or address (strategy=tpu).")
    d("integer", "checkpoint_every", 1000, "Save a checkpoint every N steps.")
    d("integer", "keep_checkpoints", 3, "Keep the last K checkpoints.")
    d("bool", "checkpoint_input", True, "Save the input iterator position in checkpoints.")
    d("integer", "eval_every", 0, "Evaluate every N steps (0: only at the end).")
    d("integer", "log_every", 10, "Write TensorBoard scalars every N steps.")
    d("integer", "num_summary_images", 4, "Images in the evaluation image summaries.")
    d("bool", "evaluate_at_end", True, "Evaluate on --eval_split after training.")
    d("bool", "export_at_end", False, "Write a SavedModel and a .keras file after training.")
    d("integer", "overlays_at_end", 0, "Write this many prediction overlays after training.")
    d("bool", "progress", True, "Show a progress bar.")


def define_export_flags():
    define_train_flags()  # the same flag files as training are accepted
    _define_once("string", "checkpoint", None, "Checkpoint to load (default: the latest "
                 "in --model_dir).")
    _define_once("string", "output", None, "Export folder (default <model_dir>/export).")
    _define_once("list", "export_scales", ["1.0"], "Scales baked into the SavedModel.")
    _define_once("bool", "export_flip", False, "Bake flip averaging into the SavedModel.")


def define_eval_flags():
    define_train_flags()  # the same flag files as training are accepted
    _define_once("string", "checkpoint", None, "Checkpoint to evaluate (default: the "
                 "latest in --model_dir).")
    _define_once("string", "split", None, "Split to evaluate (default --eval_split).")
    _define_once("bool", "save_confusion", False, "Also save the confusion matrix (.npy, "
                 ".csv).")
    _define_once("integer", "save_predictions", 0, "Save this many prediction PNGs "
                 "(-1: all).")


# ----------------------------------------------------------------------------- config


def _ints(values, name):
    if values is None:
        return None
    try:
        out = tuple(int(v) for v in values)
    except ValueError:
        raise ValueError(f"--{name}: expected integers, got {','.join(values)}") from None
    return out * 2 if len(out) == 1 else out[:2]


def config_from_flags(argv):
    """A `TrainConfig` from the parsed FLAGS (fields that have no flag keep defaults)."""
    import dataclasses

    from iseg.training.config import TrainConfig

    values = {}
    for field in dataclasses.fields(TrainConfig):
        if field.name in FLAGS:
            values[field.name] = FLAGS[field.name].value
    values["crop_size"] = _ints(values.get("crop_size"), "crop_size")
    if values.get("eval_crop_size"):
        values["eval_crop_size"] = _ints(values["eval_crop_size"], "eval_crop_size")
    if "eval_scales" in values:
        values["eval_scales"] = tuple(float(s) for s in values["eval_scales"])
    for name in ("backbone_options", "head_options", "car_options"):
        if name in values:
            values[name] = parse_options(values[name], name)
    if not values.get("model_dir"):
        values["model_dir"] = os.path.join("runs", config_name(argv) or "default")
    return TrainConfig(**values)


def user_errors():
    """Exception types reported as one-line errors by the CLIs."""
    from iseg.training.errors import (
        CheckpointMismatchError,
        ConfigError,
        EmptyDatasetError,
        TrainingDivergedError,
    )
    return (ConfigError, CheckpointMismatchError, EmptyDatasetError, TrainingDivergedError,
            FileNotFoundError, FlagFileError)


def run_cli(program, define_flags, main, argv=None, verbosity=logging.INFO):
    """The body of every entry point: define the flags, parse argv (flag files expanded),
    then `main(argv)` with the original argv, reporting user errors as one line
    `program: error: message` (exit 1)."""
    argv = list(sys.argv if argv is None else argv)
    define_flags()
    parse_flags(argv, program)
    logging.use_absl_handler()
    logging.set_verbosity(verbosity)
    try:
        return main(argv)
    except user_errors() as e:
        sys.stderr.write(f"{program}: error: {e}\n")
        sys.exit(1)
