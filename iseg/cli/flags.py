"""Command-line flags shared by `train.py`, `iseg.cli.evaluate`, `export` and `predict`.

Flag files: one flag per line, `#` or `//` comments, and `--flagfile=PATH` lines to nest
other files. absl resolves a nested relative `--flagfile` against the working directory;
here `expand_flagfiles` expands every flag file before absl sees argv, resolving a relative
path against the folder of the file that includes it (command-line paths: against the
working directory), so configs work from any working directory.
"""

import ast
import dataclasses
import os
import re
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
    """[(flag, path of the file it is in)] of a flag file, nested files expanded."""
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
                out.append((line, path))
    return out


def expand_flagfiles_with_origins(argv):
    """[(arg, flag file it came from or None)] for argv[1:], flag files expanded."""
    out = []
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
            out.append((arg, None))
        i += 1
    return out


def expand_flagfiles(argv):
    """argv with every `--flagfile=PATH` (nested ones too) replaced by the file's flags.

    Later flags override earlier ones (absl semantics), so a flag given on the command line
    after `--flagfile` wins over the file.
    """
    return argv[:1] + [arg for arg, _ in expand_flagfiles_with_origins(argv)]


def config_name(argv):
    """The name of the first command-line flag file (`configs/x/y.cfg` -> `y`), or None."""
    for i, arg in enumerate(argv[1:], 1):
        path = _flagfile_arg(arg)
        if path is None and arg in ("--flagfile", "-flagfile") and i + 1 < len(argv):
            path = argv[i + 1]
        if path:
            return os.path.splitext(os.path.basename(path))[0]
    return None


def _origin(args, error):
    """The flag file that holds the flag an absl error is about, or None."""
    name = getattr(error, "flagname", None)
    if name is None:
        match = re.search(r"flag --(\w+)", str(error))
        name = match and match.group(1)
    for arg, origin in reversed(args):
        flag = arg.lstrip("-").split("=", 1)[0]
        if name and flag in (name, f"no{name}"):
            return origin
    return None


def parse_flags(argv, program):
    """Expand flag files and parse argv into FLAGS; any problem exits with one line
    (naming the flag file when the bad flag comes from one). Values of an earlier parse
    in this process are dropped first, so every run starts from the defaults."""
    FLAGS.unparse_flags()
    try:
        args = expand_flagfiles_with_origins(argv)
        expanded = argv[:1] + [arg for arg, _ in args]
        extra = FLAGS(expanded)[1:]
        if extra:
            raise FlagFileError(f"unexpected arguments: {' '.join(extra)}")
    except FlagFileError as e:
        sys.stderr.write(f"{program}: error: {e}\n")
        sys.exit(2)
    except flags.Error as e:
        origin = _origin(args, e)
        where = f" (in flag file {origin})" if origin else ""
        sys.stderr.write(f"{program}: error: {e}{where}\n")
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


FLAG_GROUPS = {}  # flag name -> the `--help` group it is listed in (definition order)
_GROUP = ["General"]


def _group(title):
    """Flags defined after this call are listed under `title` by `--help`."""
    _GROUP[0] = title


def _define_once(kind, name, default, *args, **kwargs):
    FLAG_GROUPS.setdefault(name, _GROUP[0])
    if name in FLAGS:
        return
    if kind == "enum":  # DEFINE_enum(name, default, enum_values, help)
        flags.DEFINE_enum(name, default, args[0], args[1], **kwargs)
    else:
        getattr(flags, f"DEFINE_{kind}")(name, default, args[0], **kwargs)


_FLAG_KINDS = {bool: "bool", int: "integer", float: "float", str: "string", tuple: "list",
               dict: "string"}
# `--help` groups of the TrainConfig fields: a group starts at its first field
_FIELD_GROUPS = {"model": "Model", "dataset": "Data and augmentation",
                 "batch_size": "Optimisation", "sync_bn": "Distribution",
                 "checkpoint_every": "Checkpoints and outputs", "eval_split": "Evaluation",
                 "semi": "Semi-supervised"}


def _flag_default(value):
    if isinstance(value, tuple):
        return [str(v) for v in value]
    if isinstance(value, dict):  # key=value,... text (see parse_options)
        return ",".join(f"{k}={v!r}" for k, v in value.items())
    return value


def _define_field(field):
    """The flag of one `TrainConfig` field (type, default and help from the field)."""
    default = field.default_factory() if callable(field.default_factory) else field.default
    choices = field.metadata["choices"]
    args = (choices, field.metadata["help"]) if choices else (field.metadata["help"],)
    _define_once("enum" if choices else _FLAG_KINDS[field.type], field.name,
                 _flag_default(default), *args)


def define_run_flags():
    """Flags of every tool: progress bars and CPU devices."""
    from iseg.training.config import TrainConfig

    _group("General")
    _define_field(next(f for f in dataclasses.fields(TrainConfig) if f.name == "progress"))
    _define_once("integer", "num_cpu_devices", 0, "Split the CPU into this many logical "
                 "devices (to try distribution strategies without GPUs); 0 leaves it alone.")


def define_train_flags():
    """One flag per `TrainConfig` field (type, default and help from the field), grouped
    for `--help`, plus --data_root and --num_cpu_devices."""
    from iseg.training.config import TrainConfig

    define_run_flags()
    for field in dataclasses.fields(TrainConfig):
        if field.name in _FIELD_GROUPS:
            _group(_FIELD_GROUPS[field.name])
        _define_field(field)
        if field.name == "data_dir":
            _define_once("string", "data_root", None, "Folder a relative --data_dir "
                         "resolves against (default: $ISEG_DATA, else ./data); the dataset "
                         "flag files name only the dataset's folder in it.")


TRAIN_GROUPS = ("General", *_FIELD_GROUPS.values())


def define_export_flags():
    define_train_flags()  # the same flag files as training are accepted
    _group("Export")
    _define_once("string", "output", None, "Export folder (default <model_dir>/export).")
    _define_once("list", "export_scales", ["1.0"], "Scales baked into the SavedModel.")
    _define_once("bool", "export_flip", False, "Bake flip averaging into the SavedModel.")


def define_eval_flags():
    define_train_flags()  # the same flag files as training are accepted
    _group("Evaluate")
    _define_once("string", "split", None, "Split to evaluate (default --eval_split).")
    _define_once("bool", "save_confusion", False, "Also save the confusion matrix (.npy, "
                 ".csv).")
    _define_once("integer", "save_predictions", 0, "Save this many prediction PNGs "
                 "(-1: all).")
    _define_once("enum", "semi_weights", "auto", ["auto", "student", "teacher"],
                 "Which network of a semi-supervised checkpoint to evaluate: auto = the "
                 "EMA teacher where the method has one (what training evaluates and "
                 "exports), else the student. The student's results go to "
                 "<model_dir>/eval_student.")


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
    for field in dataclasses.fields(TrainConfig):  # every key=value,... option
        if field.type in (dict, "dict") and isinstance(values.get(field.name), str):
            values[field.name] = parse_options(values[field.name], field.name)
    values["data_dir"] = resolved_data_dir()
    if not (FLAGS["model_dir"].present and values.get("model_dir")):
        values["model_dir"] = os.path.join("runs", config_name(argv) or "default")
    return TrainConfig(**values)


def data_root():
    """The folder relative --data_dir paths resolve against."""
    return os.path.expanduser(FLAGS.data_root or os.environ.get("ISEG_DATA") or "data")


def resolved_data_dir():
    """--data_dir, resolved against the data root when relative."""
    path = FLAGS.data_dir
    if not path or "://" in path:
        return path
    path = os.path.expanduser(path)
    return path if os.path.isabs(path) else os.path.join(data_root(), path)


def check_data(splits):
    """Fail fast, before TensorFlow is imported and before anything is written, when the
    dataset or one of `splits` is missing."""
    from iseg.datasets import DATASETS, info

    if FLAGS.dataset and FLAGS.dataset not in DATASETS:
        raise CliError(f"unknown --dataset={FLAGS.dataset}; valid: "
                       f"{', '.join(DATASETS.names())}")
    path = resolved_data_dir()
    if not path:
        raise CliError("no --data_dir: give --data_dir=FOLDER (a converted dataset) or a "
                       "dataset flag file")
    if "://" in path or (FLAGS.dataset == "shapes" and not os.path.exists(path)):
        return  # remote folders are checked when read; train.py generates shapes
    if not os.path.isdir(path):
        hint = "" if os.path.isabs(FLAGS.data_dir) else (
            f" (--data_dir={FLAGS.data_dir} resolved against the data root {data_root()}: "
            "set ISEG_DATA or --data_root)")
        raise CliError(f"--data_dir={path} does not exist{hint}")
    if not FLAGS.dataset and not os.path.isfile(os.path.join(path, info.INFO_FILE)):
        raise CliError(f"no {info.INFO_FILE} in --data_dir={path}: convert the dataset "
                       "first (python -m iseg.cli.convert), or give --dataset=NAME for "
                       "records written by other tools")
    for split in splits:
        try:
            info.list_shards(path, split)
        except (FileNotFoundError, ValueError) as e:
            raise CliError(str(e)) from None


class CliError(ValueError):
    """Bad flags found before the work starts."""


LIGHT_ERRORS = (CliError, FlagFileError, FileNotFoundError)


def user_errors():
    """Exception types reported as one-line errors by the CLIs."""
    from iseg.errors import (
        CheckpointMismatchError,
        CheckpointUnreadableError,
        ConfigError,
        DataError,
        EmptyDatasetError,
        ModelDirInUseError,
        TrainingDivergedError,
    )
    return (ConfigError, CheckpointMismatchError, CheckpointUnreadableError, DataError,
            EmptyDatasetError, TrainingDivergedError, ModelDirInUseError, *LIGHT_ERRORS)


def run_cli(program, define_flags, main, argv=None, verbosity=logging.INFO, *, doc=None,
            help_groups=None, check=None, uses_tensorflow=None):
    """The body of every entry point: define the flags; answer `--help` (the flags of
    `help_groups`, with `doc` as the usage text); parse argv (flag files expanded); run
    `check()` (cheap input checks, before TensorFlow is imported); import TensorFlow
    quietly, with `usage.tensorflow_defaults()`, unless `uses_tensorflow()` says the run
    does without; then `main(argv)` with the original argv. User errors are reported as
    one line `program: error: message` (exit 1). Returns main's result when called with
    `argv` (in-process use), else None (the console scripts `sys.exit` with it)."""
    from iseg.cli import usage

    in_process = argv is not None
    argv = list(sys.argv if argv is None else argv)
    define_flags()
    wanted = usage.help_request(argv)
    if wanted:
        sys.stdout.write(usage.format_help(program, doc, FLAGS, FLAG_GROUPS,
                                           None if wanted == "full" else help_groups))
        sys.exit(0)
    parse_flags(argv, program)
    explicit = FLAGS["verbosity"].present
    logging.use_absl_handler()
    usage.quiet_library_logs(not explicit)
    if not explicit:
        logging.set_verbosity(verbosity)
    try:
        if check is not None:
            check()
        if uses_tensorflow is None or uses_tensorflow():
            usage.tensorflow_defaults()
            usage.quiet_tensorflow(FLAGS.verbosity if explicit else None)
        result = main(argv)
    except Exception as e:  # pylint: disable=broad-except
        if not isinstance(e, LIGHT_ERRORS) and not isinstance(e, user_errors()):
            raise
        sys.stderr.write(f"{program}: error: {e}\n")
        sys.exit(1)
    return result if in_process else None
