"""Convert a dataset in its own layout into sharded TFRecords.

    python -m iseg.cli.convert --dataset=cityscapes --data_dir=/data/cityscapes \
        --output_dir=/data/tfrecords/cityscapes [--splits=train,val] [--num_shards=N] \
        [--compression=NONE|GZIP|ZLIB] [--num_workers=N]

    python -m iseg.cli.convert --dataset=generic --class_list=classes.txt \
        --data_dir=DIR --output_dir=OUT
    python -m iseg.cli.convert --dataset=shapes --output_dir=OUT   # synthetic demo data
"""

import sys

from absl import app, flags, logging

FLAGS = flags.FLAGS


def define_flags():
    """Register this tool's flags (done in `run`, so importing the module defines none)."""
    def define(kind, name, default, help_text, *args):
        if name not in FLAGS:  # another entry point may define the shared ones
            getattr(flags, f"DEFINE_{kind}")(name, default, *args, help=help_text)

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


def main(argv):
    try:
        _main(argv)
    except (ValueError, FileNotFoundError) as e:  # bad input: one clear line, no traceback
        sys.exit(f"iseg-convert: error: {e}")


def _main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    from iseg import datasets  # pylint: disable=import-outside-toplevel

    if FLAGS.dataset is None:
        raise app.UsageError(
            f"--dataset is required; valid: {', '.join(datasets.DATASETS.names())}")
    if FLAGS.output_dir is None:
        raise app.UsageError("--output_dir is required")
    if FLAGS.dataset not in datasets.DATASETS:
        raise app.UsageError(
            f"unknown --dataset={FLAGS.dataset}; valid: {', '.join(datasets.DATASETS.names())}"
        )
    if FLAGS.dataset == "shapes" and FLAGS.data_dir is None:
        from iseg.datasets import synthetic  # pylint: disable=import-outside-toplevel

        info = synthetic.generate_shapes(
            FLAGS.output_dir, num_train=FLAGS.num_train, num_val=FLAGS.num_val,
            image_size=(FLAGS.image_size, FLAGS.image_size), seed=FLAGS.seed,
            num_shards=FLAGS.num_shards or 2, compression=FLAGS.compression,
        )
    else:
        if FLAGS.data_dir is None:
            raise app.UsageError("--data_dir is required")
        options = {}
        if FLAGS.dataset == "generic":
            if not FLAGS.class_list:
                raise app.UsageError("--dataset=generic needs --class_list=FILE")
            options["class_list"] = FLAGS.class_list
        if FLAGS.dataset == "cityscapes":
            options["label_files"] = FLAGS.cityscapes_labels
        from iseg.datasets.convert import convert_dataset  # pylint: disable=import-outside-toplevel

        spec = datasets.get_dataset_spec(FLAGS.dataset, **options)
        if FLAGS.sbd_dir:
            import dataclasses  # pylint: disable=import-outside-toplevel

            spec = dataclasses.replace(spec, options=spec.options + (("sbd_dir", FLAGS.sbd_dir),))
        info = convert_dataset(
            spec, FLAGS.data_dir, FLAGS.output_dir, splits=FLAGS.splits,
            num_shards=FLAGS.num_shards, compression=FLAGS.compression,
            num_workers=FLAGS.num_workers,
        )
    for split, n in info["num_examples"].items():
        logging.info("%s: %d examples", split, n)
    print(f"wrote {info['num_examples']} to {FLAGS.output_dir}", file=sys.stderr)


def run():
    define_flags()
    app.run(main)


if __name__ == "__main__":
    run()
