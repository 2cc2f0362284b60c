"""Labeled / unlabeled partitions of a training split.

A partition is two lists of record filenames (``image/filename``, the file stem for
records written by the iseg converter). It comes from

- a seeded random draw (`by_fraction`): ``round(fraction * N)`` examples (at least one,
  and at least one left unlabeled) of the split's sorted filenames, permuted by
  ``numpy.random.default_rng(seed)``;
- list files (`by_lists`) in the formats the methods' repositories ship: UniMatch /
  CorrMatch / AugSeg ``JPEGImages/x.jpg SegmentationClass/x.png``, CPS, Cityscapes
  ``leftImg8bit/train/city/x_leftImg8bit.png gtFine/...``, or a bare id a line. Each line's
  first field is matched to a record by file stem (folders, extension and the Cityscapes
  ``_leftImg8bit`` suffix dropped). Without an unlabeled list, every other example of the
  split is unlabeled; with one, no id may be in both lists.

`write_lists` writes a partition as two files of bare ids that `by_lists` reads back
(the ``make_partition`` command line: `iseg.cli.partition`).
"""

import os

import numpy as np

from iseg.errors import ConfigError

LABELED_FILE = "labeled.txt"
UNLABELED_FILE = "unlabeled.txt"
_SUFFIXES = ("_leftImg8bit",)


def stem(name):
    """The id a list entry or record filename is matched by."""
    base = os.path.splitext(os.path.basename(name.strip()))[0]
    for suffix in _SUFFIXES:
        if base.endswith(suffix):
            base = base[: -len(suffix)]
    return base


def read_list(path):
    """The ids (stems of each non-empty line's first field, in file order) of a list
    file; '#' starts a comment line."""
    if not os.path.isfile(path):
        raise ConfigError(f"partition list {path} does not exist")
    with open(path, encoding="utf-8") as f:
        fields = [line.split() for line in f]
    return [stem(parts[0]) for parts in fields if parts and not parts[0].startswith("#")]


def _index(filenames, where):
    """stem -> record filename; ConfigError when records lack names or share a stem."""
    index = {}
    for name in filenames:
        key = stem(name)
        if not key:
            raise ConfigError(f"{where}: a record has no image/filename, so examples "
                              "cannot be partitioned")
        if key in index:
            raise ConfigError(f"{where}: two records share the id {key!r} ({index[key]!r} "
                              f"and {name!r})")
        index[key] = name
    return index


def by_fraction(filenames, fraction, seed):
    """(labeled, unlabeled) record filenames: a seeded random `fraction` of `filenames`."""
    names = sorted(filenames)
    if len(names) < 2:
        raise ConfigError(f"--labeled_fraction needs at least 2 examples, the split has "
                          f"{len(names)}")
    count = min(max(1, int(round(fraction * len(names)))), len(names) - 1)
    order = np.random.default_rng(seed).permutation(len(names))
    labeled = sorted(names[i] for i in order[:count])
    chosen = set(labeled)
    return labeled, [n for n in names if n not in chosen]


def match_list(path, filenames, where):
    """The record filenames of the ids listed in `path` (list order); ConfigError naming
    the file and the first id that no record of `filenames` has."""
    index = _index(filenames, where)
    ids = read_list(path)
    unknown = [i for i in ids if i not in index]
    if unknown:
        raise ConfigError(f"{path}: id {unknown[0]!r} is not in {where} ({len(unknown)} of "
                          f"{len(ids)} ids unknown)")
    if not ids:
        raise ConfigError(f"{path}: the list is empty")
    return [index[i] for i in ids]


def by_lists(filenames, labeled_list, unlabeled_list=None, unlabeled_filenames=None,
             where="the split", unlabeled_where=None):
    """(labeled, unlabeled) record filenames from list files (see the module docstring).

    `filenames`: the records of the labeled split; `unlabeled_filenames`: those of the
    split the unlabeled list refers to (default: the same). Without `unlabeled_list`,
    every record of `filenames` not labeled is unlabeled. An id in both lists is a
    ConfigError (the official lists are disjoint; ids are compared even when the lists
    name different splits, as VOC's train_aug holds train)."""
    labeled = match_list(labeled_list, filenames, where)
    if unlabeled_list is None:
        chosen = set(labeled)
        return labeled, sorted(n for n in filenames if n not in chosen)
    pool = filenames if unlabeled_filenames is None else unlabeled_filenames
    unlabeled = match_list(unlabeled_list, pool, unlabeled_where or where)
    ids = {stem(n) for n in labeled}
    shared = [stem(n) for n in unlabeled if stem(n) in ids]
    if shared:
        raise ConfigError(f"{unlabeled_list}: id {shared[0]!r} is also in {labeled_list} "
                          f"({len(shared)} ids in both; an example is labeled or unlabeled)")
    return labeled, unlabeled


def write_lists(output_dir, labeled, unlabeled):
    """Write `labeled.txt` and `unlabeled.txt` (one id a line) into `output_dir`; returns
    their paths."""
    os.makedirs(output_dir, exist_ok=True)
    paths = []
    for name, items in ((LABELED_FILE, labeled), (UNLABELED_FILE, unlabeled)):
        path = os.path.join(output_dir, name)
        tmp = f"{path}.tmp-{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write("".join(f"{stem(n)}\n" for n in items))
        os.replace(tmp, path)
        paths.append(path)
    return paths
