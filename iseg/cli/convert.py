r"""Convert a dataset in its own layout into sharded TFRecords.

    python -m iseg.cli.convert --dataset=cityscapes --data_dir=/data/cityscapes \
        --output_dir=$ISEG_DATA/cityscapes [--splits=train,val] [--num_shards=N] \
        [--compression=NONE|GZIP|ZLIB] [--num_workers=N]

    python -m iseg.cli.convert --dataset=generic --class_list=classes.txt \
        --data_dir=DIR --output_dir=OUT
    python -m iseg.cli.convert --dataset=shapes --output_dir=OUT   # synthetic demo data

Text recognition (iseg.text): an LMDB benchmark folder or a `path<TAB>word` label file
becomes one split (--splits=NAME, default test); text_synth renders train (--num_train),
test and test_curved (--num_val each) words:

    python -m iseg.cli.convert --dataset=text_lmdb --data_dir=IIIT5K_lmdb --splits=iiit5k \
        --output_dir=$ISEG_DATA/text_benchmarks
    python -m iseg.cli.convert --dataset=text_folder --data_dir=words/labels.txt \
        --splits=train --output_dir=OUT
    python -m iseg.cli.convert --dataset=text_synth --output_dir=OUT
"""

import sys

from absl import logging

from iseg.cli import flags as flags_lib

FLAGS = flags_lib.FLAGS
PROGRAM = "iseg.cli.convert"
TEXT_DATASETS = {"text_lmdb": "lmdb", "text_folder": "folder", "text_synth": None}


def define_flags():
    """Register this tool's flags (done in `run`, so importing the module defines none)."""
    flags_lib.define_run_flags()
    flags_lib._group("Convert")

    def define(kind, name, default, help_text, *args):
        if kind == "enum":
            flags_lib._define_once(kind, name, default, args[0], help_text)
        else:
            flags_lib._define_once(kind, name, default, help_text)

    define("string", "dataset", None, "Dataset name (see iseg.datasets.DATASETS).")
    define("string", "data_dir", None, "Folder with the dataset in its own layout.")
    define("string", "output_dir", None, "Folder for the TFRecord shards and dataset_info.json.")
    define("list", "splits", None, "Splits to convert (default: train,val).")
    define("integer", "num_shards", None, "Shards per split (default: ~500 examples each).")
    define("enum", "compression", "NONE", "Record compression.", ["NONE", "GZIP", "ZLIB"])
    define("integer", "num_workers", None, "Worker processes (default: CPU count, max 8).")
    define("string", "class_list", None, "Class-list file for --dataset=generic.")
    define("string", "sbd_dir", None, "SBD benchmark_RELEASE/dataset folder for voc2012 train_aug.")
    define("enum", "cityscapes_labels", "labelIds", "cityscapes: label files to read "
           "(labelIds are mapped to trainIds).", ["labelIds", "labelTrainIds"])
    define("integer", "num_train", 200, "shapes: number of training images.")
    define("integer", "num_val", 50, "shapes: number of validation images.")
    define("integer", "image_size", 96, "shapes: image height and width.")
    define("integer", "seed", 0, "shapes: random seed.")


def check():
    """Flag errors, before anything is imported or written."""
    from iseg import datasets  # pylint: disable=import-outside-toplevel

    valid = ", ".join(datasets.DATASETS.names() + sorted(TEXT_DATASETS))
    if FLAGS.dataset is None:
        raise flags_lib.CliError(f"--dataset is required; valid: {valid}")
    if FLAGS.dataset not in datasets.DATASETS and FLAGS.dataset not in TEXT_DATASETS:
        raise flags_lib.CliError(f"unknown --dataset={FLAGS.dataset}; valid: {valid}")
    if FLAGS.output_dir is None:
        raise flags_lib.CliError("--output_dir is required")
    if FLAGS.data_dir is None and FLAGS.dataset not in ("shapes", "text_synth"):
        raise flags_lib.CliError("--data_dir is required")
    if TEXT_DATASETS.get(FLAGS.dataset) and len(FLAGS.splits or []) > 1:
        raise flags_lib.CliError(f"--dataset={FLAGS.dataset} converts one source into one "
                                 f"split; got --splits={','.join(FLAGS.splits)}")
    if FLAGS.dataset == "generic" and not FLAGS.class_list:
        raise flags_lib.CliError("--dataset=generic needs --class_list=FILE")


def main(_):
    try:
        info = _convert()
    except ValueError as e:  # bad input: one clear line, no traceback
        raise flags_lib.CliError(str(e)) from None
    for split, n in info["num_examples"].items():
        logging.info("%s: %d examples", split, n)
    print(f"wrote {info['num_examples']} to {FLAGS.output_dir}", file=sys.stderr)
    return info


def _convert_text():
    from iseg.text import records  # pylint: disable=import-outside-toplevel

    if FLAGS.dataset == "text_synth":
        return records.generate_synth(
            FLAGS.output_dir, {"train": (FLAGS.num_train, None), "test": (FLAGS.num_val, 0.0),
                               "test_curved": (FLAGS.num_val, 1.0)},
            seed=FLAGS.seed, num_workers=FLAGS.num_workers or 2,
            num_shards=FLAGS.num_shards, compression=FLAGS.compression)
    split = (FLAGS.splits or ["test"])[0]
    records.convert_text(FLAGS.data_dir, FLAGS.output_dir, split, TEXT_DATASETS[FLAGS.dataset],
                         FLAGS.num_shards, FLAGS.compression)
    return records.load_text_info(FLAGS.output_dir)


def _convert():
    from iseg import datasets  # pylint: disable=import-outside-toplevel

    if FLAGS.dataset in TEXT_DATASETS:
        return _convert_text()
    if FLAGS.dataset == "shapes" and FLAGS.data_dir is None:
        from iseg.datasets import synthetic  # pylint: disable=import-outside-toplevel

        return synthetic.generate_shapes(
            FLAGS.output_dir, num_train=FLAGS.num_train, num_val=FLAGS.num_val,
            image_size=(FLAGS.image_size, FLAGS.image_size), seed=FLAGS.seed,
            num_shards=FLAGS.num_shards or 2, compression=FLAGS.compression,
        )
    options = {}
    if FLAGS.dataset == "generic":
        options["class_list"] = FLAGS.class_list
    if FLAGS.dataset == "cityscapes":
        options["label_files"] = FLAGS.cityscapes_labels
    from iseg.datasets.convert import convert_dataset  # pylint: disable=import-outside-toplevel

    spec = datasets.get_dataset_spec(FLAGS.dataset, **options)
    if FLAGS.sbd_dir:
        import dataclasses  # pylint: disable=import-outside-toplevel

        spec = dataclasses.replace(spec, options=spec.options + (("sbd_dir", FLAGS.sbd_dir),))
    return convert_dataset(
        spec, FLAGS.data_dir, FLAGS.output_dir, splits=FLAGS.splits,
        num_shards=FLAGS.num_shards, compression=FLAGS.compression,
        num_workers=FLAGS.num_workers, progress=FLAGS.progress,
    )


def run(argv=None):
    return flags_lib.run_cli(PROGRAM, define_flags, main, argv, doc=__doc__,
                             help_groups=("General", "Convert"), check=check)


if __name__ == "__main__":
    run()
