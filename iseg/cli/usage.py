"""What every entry point does before its work: `--help` output and quiet logs.

`--help` (also `-h`, `--helpshort`) lists the flags the tool reads, grouped, with their
defaults; `--helpfull` lists every flag, absl's own included.

By default TensorFlow starts quiet: its C++ log shows only fatal errors
(`TF_CPP_MIN_LOG_LEVEL=3`; errors reach the user as Python exceptions), what it prints
while it is imported (CUDA probing on a machine without GPUs, the CPU-feature notice) is
held back, and the info lines TensorFlow and Keras log through absl are dropped (iseg's own
are kept). `--verbosity=N` or the environment variable `TF_CPP_MIN_LOG_LEVEL` bring them
back.

TensorFlow's CPU allocator defaults to its BFC allocator (`TF_CPU_ALLOCATOR_USE_BFC=true`,
unless the environment says otherwise): without oneDNN, the plain allocator returns every
large tensor to the operating system and page-faults it in again on the next step: about
a tenth of a CamVid training step on a 2-core machine (docs/benchmarks.md).
"""

import logging
import os
import sys
import tempfile
import textwrap

HELP_ARGS = ("--help", "-help", "-h", "-?", "--helpshort", "-helpshort")
HELPFULL_ARGS = ("--helpfull", "-helpfull")


def help_request(argv):
    """'full', 'short' or None: whether argv asks for help."""
    for arg in argv[1:]:
        if arg in HELPFULL_ARGS:
            return "full"
        if arg in HELP_ARGS:
            return "short"
    return None


def _default_text(value):
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value) if value != "" else "''"


def _flag_line(flag):
    """`--name=<type> (default: x)` and the wrapped help text below it."""
    kind = flag.flag_type()
    enum_values = getattr(flag.parser, "enum_values", None)
    if kind == "bool":
        syntax = f"--[no]{flag.name}"
    elif enum_values:
        syntax = f"--{flag.name}={{{'|'.join(enum_values)}}}"
    else:
        syntax = f"--{flag.name}=<{kind.replace('comma separated list of strings', 'list')}>"
    help_text = flag.help or ""
    if enum_values:  # absl prefixes "<a|b>: "; the syntax line already lists them
        help_text = help_text.split(": ", 1)[-1]
    body = textwrap.fill(help_text, width=88, initial_indent="      ",
                         subsequent_indent="      ")
    return f"  {syntax} (default: {_default_text(flag.default)})\n{body}"


def format_help(program, doc, flag_values, groups, shown_groups=None):
    """The help text: usage (the tool's docstring), then each group's flags.

    `groups` maps flag name -> group title (in definition order); `shown_groups` limits the
    groups listed (None: every group, then every other flag absl knows)."""
    lines = [f"usage: {program} [--flag=value ...] [--flagfile=FILE ...]", ""]
    if doc:
        lines += [textwrap.dedent(doc).strip(), ""]
    order = []
    for title in groups.values():
        if title not in order and (shown_groups is None or title in shown_groups):
            order.append(title)
    for title in order:
        lines.append(f"{title}:")
        lines += [_flag_line(flag_values[n]) for n, t in groups.items()
                  if t == title and n in flag_values]
        lines.append("")
    if shown_groups is None:
        others = sorted(n for n in flag_values if n not in groups and len(n) > 1)
        if others:
            lines.append("Other flags (logging, flag files; absl):")
            lines += [_flag_line(flag_values[n]) for n in others]
            lines.append("")
    else:
        lines.append("--helpfull lists every flag; --flagfile=FILE reads flags from a file.")
    return "\n".join(lines).rstrip() + "\n"


def tf_log_level(verbosity):
    """`TF_CPP_MIN_LOG_LEVEL` for an absl --verbosity (0 info ... -3 fatal)."""
    return str(min(3, max(0, -int(verbosity))))


def tensorflow_defaults():
    """Environment defaults read when TensorFlow starts; the user's own values win."""
    os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")


def quiet_tensorflow(verbosity=None):
    """Import TensorFlow with its start-up chatter held back (printed if the import fails).

    With an explicit `verbosity`, or `TF_CPP_MIN_LOG_LEVEL` set by the user, nothing is
    held back and TensorFlow's C++ log level follows the setting."""
    if verbosity is not None:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", tf_log_level(verbosity))
        return
    if "TF_CPP_MIN_LOG_LEVEL" in os.environ or "tensorflow" in sys.modules:
        return
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            import tensorflow as tf  # pylint: disable=import-outside-toplevel

            tf.config.list_physical_devices()  # probes CUDA (cuInit) while held back
        except BaseException:
            os.dup2(saved, 2)
            held.seek(0)
            sys.stderr.write(held.read().decode("utf-8", "replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


LIBRARIES = tuple(f"{os.sep}{name}{os.sep}" for name in ("tensorflow", "keras", "tf_keras"))


class _LibraryInfoFilter(logging.Filter):
    """Drops the info lines that TensorFlow and Keras log through absl."""

    def filter(self, record):
        return record.levelno >= logging.WARNING or not any(
            lib in record.pathname for lib in LIBRARIES)


_LIBRARY_INFO = _LibraryInfoFilter()


def quiet_library_logs(quiet=True):
    """Drop (or, with `quiet=False`, show again) TensorFlow's and Keras' absl info lines."""
    from absl import logging as absl_logging  # pylint: disable=import-outside-toplevel

    handler = absl_logging.get_absl_handler()
    if quiet:
        handler.addFilter(_LIBRARY_INFO)  # a no-op when already there
    else:
        handler.removeFilter(_LIBRARY_INFO)
