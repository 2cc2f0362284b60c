r"""Write a seeded labeled / unlabeled partition of a converted dataset's split.

    python -m iseg.cli.partition --data_dir=$ISEG_DATA/camvid --labeled_fraction=0.125 \
        [--split=train] [--seed=0] [--output_dir=DIR]

Writes DIR/labeled.txt and DIR/unlabeled.txt (one example id a line; default DIR:
<data_dir>/partitions/<split>_<fraction>_seed<seed>), the same partition that
`train.py --semi=... --labeled_fraction=F --seed=S --labeled_split=<split>` draws. Train on
them with --labeled_split=<split> --labeled_list=DIR/labeled.txt
--unlabeled_list=DIR/unlabeled.txt.
"""

import os
import sys

from iseg.cli import flags as flags_lib

FLAGS = flags_lib.FLAGS
PROGRAM = "iseg.cli.partition"


def define_flags():
    """Register this tool's flags (done in `run`, so importing the module defines none)."""
    flags_lib.define_run_flags()
    flags_lib._group("Partition")
    flags_lib._define_once("string", "data_dir", None, "A converted dataset folder (relative: "
                           "against --data_root).")
    flags_lib._define_once("string", "data_root", None, "Folder a relative --data_dir "
                           "resolves against (default: $ISEG_DATA, else ./data).")
    # default None, as evaluate's --split (flags are defined once per process): train
    flags_lib._define_once("string", "split", None, "The split to partition (default: train).")
    flags_lib._define_once("float", "labeled_fraction", None, "Fraction of the split that is "
                           "labeled, in (0, 1).")
    flags_lib._define_once("integer", "seed", 0, "Random seed of the partition.")
    flags_lib._define_once("string", "output_dir", None, "Folder of labeled.txt and "
                           "unlabeled.txt (default: <data_dir>/partitions/<split>_<fraction>"
                           "_seed<seed>).")


def check():
    if not FLAGS.data_dir:
        raise flags_lib.CliError("--data_dir is required")
    fraction = FLAGS.labeled_fraction
    if fraction is None:
        raise flags_lib.CliError("--labeled_fraction is required (the labeled fraction of "
                                 "the split, in (0, 1))")
    if not 0.0 < fraction < 1.0:
        raise flags_lib.CliError(f"--labeled_fraction={fraction}: must be in (0, 1)")


def _split():
    return FLAGS.split or "train"


def output_dir(data_dir):
    return FLAGS.output_dir or os.path.join(
        data_dir, "partitions", f"{_split()}_{FLAGS.labeled_fraction:g}_seed{FLAGS.seed}")


def main(_):
    from iseg.datasets.pipeline import record_filenames
    from iseg.semi import partition

    data_dir = flags_lib.resolved_data_dir()
    try:
        names = record_filenames(data_dir, _split())
    except (FileNotFoundError, ValueError) as e:
        raise flags_lib.CliError(str(e)) from None
    labeled, unlabeled = partition.by_fraction(names, FLAGS.labeled_fraction, FLAGS.seed)
    paths = partition.write_lists(output_dir(data_dir), labeled, unlabeled)
    print(f"{len(labeled)} labeled: {paths[0]}\n{len(unlabeled)} unlabeled: {paths[1]}",
          file=sys.stderr)
    return paths


def run(argv=None):
    return flags_lib.run_cli(PROGRAM, define_flags, main, argv, doc=__doc__,
                             help_groups=("General", "Partition"), check=check)


if __name__ == "__main__":
    run()
