"""`dataset_info.json` and shard naming of a converted dataset folder.

Local paths use the standard library (no TensorFlow import); URLs such as ``gs://...``
go through `tf.io.gfile`, so training can read records from cloud storage.
"""

import glob
import json
import os
import re

INFO_FILE = "dataset_info.json"


def is_url(path):
    return "://" in str(path)


def _gfile():
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    return tf.io.gfile


def isfile(path):
    if is_url(path):
        return _gfile().exists(path) and not _gfile().isdir(path)
    return os.path.isfile(path)


def isdir(path):
    return _gfile().isdir(path) if is_url(path) else os.path.isdir(path)


def listdir(path):
    return _gfile().listdir(path) if is_url(path) else os.listdir(path)


def getsize(path):
    return _gfile().stat(path).length if is_url(path) else os.path.getsize(path)


def open_file(path, mode="rb"):
    return _gfile().GFile(path, mode) if is_url(path) else open(path, mode)  # noqa: SIM115
SHARD_RE = re.compile(r"^(?P<split>.+)-(?P<index>\d{5})-of-(?P<count>\d{5})\.tfrecord$")


def shard_name(split, index, count):
    return f"{split}-{index:05d}-of-{count:05d}.tfrecord"


def load_dataset_info(data_dir):
    """The parsed ``dataset_info.json`` of a converted dataset folder."""
    path = os.path.join(data_dir, INFO_FILE)
    if not isfile(path):
        raise FileNotFoundError(
            f"{path} not found: {data_dir} is not a converted dataset folder "
            "(run `python -m iseg.cli.convert` first, or give --dataset=NAME to read records "
            "written by other tools)"
        )
    try:
        with open_file(path, "rb") as f:
            return json.loads(f.read().decode("utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None


def num_examples(data_dir, split):
    """Examples in `split` as recorded in dataset_info.json (None when not recorded)."""
    try:
        return int(load_dataset_info(data_dir)["num_examples"][split])
    except (FileNotFoundError, KeyError, TypeError, ValueError):
        return None


def write_json_atomic(path, obj):
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def list_shards(data_dir, split, file_pattern=None):
    """Sorted record files of `split` in `data_dir`.

    Files named ``{split}-iiiii-of-nnnnn.tfrecord`` are preferred (and checked for a
    complete set); otherwise any ``{split}-*`` / ``{split}*.tfrecord*`` file (the original
    iSeg tools wrote ``train-0.tfrecord``) is used. `file_pattern` overrides the search.
    """
    if file_pattern is not None:
        pattern = os.path.join(data_dir, file_pattern)
        files = sorted(_gfile().glob(pattern) if is_url(pattern) else glob.glob(pattern))
        if not files:
            raise FileNotFoundError(f"no files match {os.path.join(data_dir, file_pattern)}")
        return files
    if not isdir(data_dir):
        raise FileNotFoundError(f"dataset folder not found: {data_dir}")
    names = sorted(n.rstrip("/") for n in listdir(data_dir))
    sharded = [n for n in names if (m := SHARD_RE.match(n)) and m.group("split") == split]
    if sharded:
        counts = {int(SHARD_RE.match(n).group("count")) for n in sharded}
        if len(counts) != 1 or len(sharded) != counts.pop():
            raise ValueError(
                f"incomplete or mixed shard set for split {split!r} in {data_dir}: {sharded}"
            )
        return [os.path.join(data_dir, n) for n in sharded]
    loose = [
        n for n in names
        if (n.startswith(split + "-") or n.startswith(split + "."))
        and ".tfrecord" in n and ".tmp" not in n
    ]
    if not loose:
        raise FileNotFoundError(f"no record files for split {split!r} in {data_dir}")
    return [os.path.join(data_dir, n) for n in loose]
