"""Partitions: the seeded draw, the published list formats matched by stem, one-line
errors, the make_partition command line, and the record filter of the input pipeline."""

import numpy as np
import pytest

from datasets_testutil import read_records
from iseg.datasets.pipeline import build_dataset, record_filenames
from iseg.errors import ConfigError
from iseg.semi import partition


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    from iseg.datasets.synthetic import generate_shapes

    out = tmp_path_factory.mktemp("semi_part") / "shapes"
    generate_shapes(str(out), num_train=9, num_val=2, image_size=(24, 24), num_shards=2)
    return str(out)


def test_seeded_fraction_is_a_reproducible_split_of_the_sorted_names():
    names = [f"img_{i:03d}" for i in range(40)][::-1]
    labeled, unlabeled = partition.by_fraction(names, 0.125, seed=3)
    # oracle: the first round(0.125 * 40) = 5 names of a seeded permutation of the sorted ids
    order = np.random.default_rng(3).permutation(40)
    assert labeled == sorted(f"img_{i:03d}" for i in order[:5])
    assert sorted(labeled + unlabeled) == sorted(names) and not set(labeled) & set(unlabeled)
    assert partition.by_fraction(names[::-1], 0.125, seed=3) == (labeled, unlabeled)
    assert partition.by_fraction(names, 0.125, seed=4)[0] != labeled
    assert len(partition.by_fraction(names[:3], 0.01, 0)[0]) == 1  # at least one labeled
    assert len(partition.by_fraction(names[:3], 0.99, 0)[1]) == 1  # and one unlabeled
    with pytest.raises(ConfigError, match="needs at least 2 examples, the split has 1"):
        partition.by_fraction(names[:1], 0.5, 0)


def test_published_list_formats_match_records_by_stem(tmp_path):
    records = ["2007_000032", "2007_000039", "2008_000002", "aachen_000000_000019",
               "x.png"]
    lists = {
        "unimatch.txt": "JPEGImages/2007_000032.jpg SegmentationClass/2007_000032.png\n"
                        "JPEGImages/2008_000002.jpg SegmentationClass/2008_000002.png\n",
        "bare.txt": "\n2007_000039\n# a comment\n2007_000032\n",
        "cityscapes.txt": "leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png "
                          "gtFine/train/aachen/aachen_000000_000019_gtFine_labelTrainIds.png\n",
        "ext.txt": "images/x.jpg\tlabels/x.png\n",
    }
    for name, text in lists.items():
        (tmp_path / name).write_text(text)
    match = lambda n: partition.match_list(str(tmp_path / n), records, "the split")  # noqa
    assert match("unimatch.txt") == ["2007_000032", "2008_000002"]
    assert match("bare.txt") == ["2007_000039", "2007_000032"]
    assert match("cityscapes.txt") == ["aachen_000000_000019"]
    assert match("ext.txt") == ["x.png"]
    labeled, unlabeled = partition.by_lists(records, str(tmp_path / "unimatch.txt"))
    assert unlabeled == ["2007_000039", "aachen_000000_000019", "x.png"]
    labeled, unlabeled = partition.by_lists(records, str(tmp_path / "bare.txt"),
                                            str(tmp_path / "cityscapes.txt"))
    assert unlabeled == ["aachen_000000_000019"]


def test_unknown_ids_and_missing_files_are_one_line(tmp_path):
    path = tmp_path / "l.txt"
    path.write_text("2007_000032\nnope_1\nnope_2\n")
    with pytest.raises(ConfigError) as e:
        partition.match_list(str(path), ["2007_000032"], "the train split of D")
    assert str(e.value) == (f"{path}: id 'nope_1' is not in the train split of D (2 of 3 ids "
                            "unknown)")
    with pytest.raises(ConfigError, match=r"^partition list .*missing.txt does not exist$"):
        partition.read_list(str(tmp_path / "missing.txt"))
    with pytest.raises(ConfigError, match="two records share the id 'a'"):
        partition.match_list(str(path), ["a.jpg", "dir/a.png"], "D")


def test_an_id_in_both_lists_is_refused_naming_both_files(tmp_path):
    labeled, unlabeled = tmp_path / "l.txt", tmp_path / "u.txt"
    labeled.write_text("JPEGImages/a.jpg SegmentationClass/a.png\nb\n")
    unlabeled.write_text("c\nb\na\n")
    names = ["a", "b", "c", "d"]
    with pytest.raises(ConfigError) as e:
        partition.by_lists(names, str(labeled), str(unlabeled))
    assert str(e.value) == (f"{unlabeled}: id 'b' is also in {labeled} (2 ids in both; an "
                            "example is labeled or unlabeled)")
    with pytest.raises(ConfigError, match=r"u\.txt: id 'b' is also in .*l\.txt \(2 ids"):
        partition.by_lists(names[:2], str(labeled), str(unlabeled), names)  # other split
    unlabeled.write_text("c\nd\n")
    assert partition.by_lists(names, str(labeled), str(unlabeled)) == (["a", "b"], ["c", "d"])


def test_written_lists_read_back_as_the_same_partition(tmp_path):
    names = [f"n{i}" for i in range(10)]
    labeled, unlabeled = partition.by_fraction(names, 0.3, seed=1)
    paths = partition.write_lists(str(tmp_path / "p"), labeled, unlabeled)
    assert partition.by_lists(names, *paths) == (labeled, unlabeled)


def test_make_partition_cli_writes_the_training_partition(shapes, tmp_path):
    from iseg.cli import partition as cli

    paths = cli.run(["iseg.cli.partition", f"--data_dir={shapes}", "--labeled_fraction=0.25",
                     "--seed=5", f"--output_dir={tmp_path / 'out'}"])
    names = record_filenames(shapes, "train")
    assert sorted(names) == sorted(read_records(shapes, "train"))
    assert partition.by_lists(names, *paths) == partition.by_fraction(names, 0.25, 5)
    assert len(partition.read_list(paths[0])) == 2  # round(0.25 * 9)


@pytest.mark.parametrize("flag, message", [
    ("", "--labeled_fraction is required"),
    ("--labeled_fraction=1.5", "--labeled_fraction=1.5: must be in (0, 1)"),
])
def test_make_partition_cli_refuses_a_missing_or_bad_fraction(shapes, tmp_path, capsys, flag,
                                                              message):
    from iseg.cli import partition as cli

    argv = ["iseg.cli.partition", f"--data_dir={shapes}", f"--output_dir={tmp_path / 'out'}"]
    with pytest.raises(SystemExit) as exit_info:
        cli.run(argv + ([flag] if flag else []))
    assert exit_info.value.code != 0
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_pipeline_reads_only_the_kept_records(shapes):
    images = read_records(shapes, "train")
    keep = sorted(images)[2:5]
    ds = build_dataset(shapes, "train", training=False, batch_size=1, keep_filenames=keep)
    seen = [f["filename"][0].numpy().decode() for f, _ in ds]
    assert sorted(seen) == keep
    ds = build_dataset(shapes, "train", training=False, batch_size=1, keep_filenames=[])
    assert len(list(ds)) == 0
