"""The CamVid protocol: every row of the CamVid table, trained one after another.

    python benchmarks/camvid_protocol.py [--data_root=DIR] [--rows=fcn_r18_d8,...] \
        [--source=../shared/datasets/camvid] [--runs_dir=runs/camvid] [--report_only] \
        [--table=supervised|semi]

1. Data (once): the 480x360 CamVid images (train 367, val 101) are downscaled by 2 to
   240x180 (images: area average; labels: the nearest pixel, every second one) and
   converted into `<data_root>/camvid_240x180` (`--data_root`, else $ISEG_DATA, else
   ./data), the folder `configs/datasets/camvid_240x180.cfg` names.
2. Rows: `train.py --flagfile=configs/camvid/<row>.cfg --seed=S
   --model_dir=<runs_dir>/<row>_s<S>`, sequentially. A row whose results file exists is
   skipped; an interrupted row resumes from its last checkpoint (train.py does that).
   Per row it records the wall-clock and CPU time of the training process, the load
   average (sampled every 30 s), the val mIoU / per-class IoU at every evaluation, and
   copies the checkpoint of the best evaluation to `<model_dir>/best/`.
3. Report (after every row): `benchmarks/results/camvid_<row>_s<S>.json`,
   `docs/images/camvid_curves.png` (val mIoU vs step) and the tables in
   `docs/benchmarks.md` (between the `camvid-table` markers).

`--table=semi` runs the semi-supervised rows instead (`configs/camvid/semi/<method>.cfg`,
results `benchmarks/results/camvid_semi_<method>_s<S>.json`, curves
`docs/images/camvid_semi_curves.png`, the table in `docs/semi_supervised.md` between the
`camvid-semi-table` markers). Rows whose method evaluates an EMA teacher also record the
student of their final checkpoint (`evaluate --semi_weights=student`); `--student_scores`
adds it to rows that finished without it.
"""

import argparse
import glob
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(REPO, "benchmarks", "results")
DOC = os.path.join(REPO, "docs", "benchmarks.md")
CURVES = os.path.join(REPO, "docs", "images", "camvid_curves.png")
RUNS = os.path.join(REPO, "runs", "camvid")
DATA_FOLDER = "camvid_240x180"
FACTOR = 2
MARKERS = ("<!-- camvid-table start -->", "<!-- camvid-table end -->")

# (table label, flag file stem in configs/camvid, seeds)
ROWS = (
    ("FCN", "fcn_r18_d8", (0, 1)),
    ("FCN + SAR", "fcn_r18_d8_sar", (0, 1)),
    ("self-attention", "nl_r18_d8", (0, 1)),
    ("self-attention + CAR", "nl_r18_d8_car", (0, 1)),
    ("CAA", "caa_r18_d8", (0, 1)),
    ("CAA + CAR", "caa_r18_d8_car", (0, 1)),
    ("DeepLabV3+", "deeplabv3plus_r18_d8", (0,)),
    ("KSAC", "ksac_r18_d8", (0,)),
    ("CARD", "card_r18", (0,)),
    ("HFGD", "hfgd_r18", (0,)),
)
COMPARISONS = (("self-attention + CAR", "self-attention"), ("CAA + CAR", "CAA"),
               ("FCN + SAR", "FCN"))

# The semi-supervised table (`--table=semi`, docs/semi_supervised.md): 46 labeled images
# (configs/camvid/semi/labeled_1_8_seed0.txt), the other 321 unlabeled; flag files in
# configs/camvid/semi, results in benchmarks/results/camvid_semi_<method>_s<seed>.json.
SEMI_ROWS = (
    ("supervised only (46 labeled)", "semi/supervised", (0, 1)),
    ("UniMatch", "semi/unimatch", (0, 1)),
    ("CPS", "semi/cps", (0, 1)),
    ("AugSeg", "semi/augseg", (0, 1)),
    ("iMAS", "semi/imas", (0, 1)),
    ("CorrMatch", "semi/corrmatch", (0, 1)),
    ("CW-BASS", "semi/cwbass", (0, 1)),
)
SEMI_COMPARISONS = tuple((label, SEMI_ROWS[0][0]) for label, _, _ in SEMI_ROWS[1:])
SEMI_DOC = os.path.join(REPO, "docs", "semi_supervised.md")
SEMI_CURVES = os.path.join(REPO, "docs", "images", "camvid_semi_curves.png")
SEMI_LABELED = os.path.join("configs", "camvid", "semi", "labeled_1_8_seed0.txt")
SEMI_DATA_FOLDER = "camvid_240x180_labeled_1_8"  # the supervised-only row's data
SEMI_MARKERS = ("<!-- camvid-semi-table start -->", "<!-- camvid-semi-table end -->")
TABLES = {  # --table: rows, comparisons, doc, curves, markers
    "supervised": (ROWS, COMPARISONS, DOC, CURVES, MARKERS),
    "semi": (SEMI_ROWS, SEMI_COMPARISONS, SEMI_DOC, SEMI_CURVES, SEMI_MARKERS),
}


def run_order(rows=ROWS):
    """[(label, stem, seed)]: the first seed of every row, then the second seeds."""
    most = max(len(seeds) for _, _, seeds in rows)
    return [(label, stem, seeds[i]) for i in range(most) for label, stem, seeds in rows
            if i < len(seeds)]


def run_name(stem, seed):
    """`semi/unimatch`, 1 -> `semi_unimatch_s1` (run folder, log and results names)."""
    return f"{stem.replace('/', '_')}_s{seed}"


# ------------------------------------------------------------------------------- data


def downscale_pair(image, label, factor):
    """(image, label) arrays downscaled by an integer `factor`: the image by the area
    average (rounded to uint8), the label by taking the pixel nearest each block's centre."""
    import numpy as np

    h, w = (image.shape[0] // factor) * factor, (image.shape[1] // factor) * factor
    blocks = image[:h, :w].reshape(h // factor, factor, w // factor, factor, -1)
    small = np.round(blocks.astype(np.float64).mean(axis=(1, 3))).astype(np.uint8)
    return small, label[factor // 2:h:factor, factor // 2:w:factor]


def prepare_data(source, output_dir, factor=FACTOR, train_keep=None):
    """Downscale the CamVid folder `source` (SegNet layout) by `factor` and convert it into
    `output_dir` (TFRecords + dataset_info.json); `train_keep`: only these training image
    stems (the labeled part of a partition)."""
    import numpy as np
    import tensorflow as tf

    from iseg.datasets import convert_dataset

    with tempfile.TemporaryDirectory() as tmp:
        for split in ("train", "val"):
            os.makedirs(os.path.join(tmp, split))
            os.makedirs(os.path.join(tmp, split + "annot"))
            for path in sorted(glob.glob(os.path.join(source, split, "*"))):
                stem = os.path.splitext(os.path.basename(path))[0]
                if split == "train" and train_keep is not None and stem not in train_keep:
                    continue
                label_path = os.path.join(source, split + "annot", stem + ".png")
                image = tf.io.decode_image(tf.io.read_file(path), 3).numpy()
                label = tf.io.decode_png(tf.io.read_file(label_path), 1).numpy()
                image, label = downscale_pair(image, label, factor)
                tf.io.write_file(os.path.join(tmp, split, stem + ".jpg"), tf.io.encode_jpeg(
                    np.ascontiguousarray(image), quality=95, chroma_downsampling=False))
                tf.io.write_file(os.path.join(tmp, split + "annot", stem + ".png"),
                                 tf.io.encode_png(np.ascontiguousarray(label)))
        return convert_dataset("camvid", tmp, output_dir, progress=False)


# ------------------------------------------------------------------------------- rows


def semi_labeled_stems(path=None):
    """The stems of the labeled training images of the semi-supervised table (`path`:
    the partition file, default configs/camvid/semi's seed-0 1/8 list)."""
    with open(path or os.path.join(REPO, SEMI_LABELED), encoding="utf-8") as f:
        return {line.strip() for line in f if line.strip()}


def read_evaluations(model_dir):
    """[(step, scores)] of the evaluations written under `<model_dir>/eval`, by step (a
    step evaluated twice, after a resume, keeps its newest file)."""
    by_step = {}
    for path in sorted(glob.glob(os.path.join(model_dir, "eval", "*_results.json")),
                       key=os.path.getmtime):
        with open(path, encoding="utf-8") as f:
            scores = json.load(f)
        if "step" in scores:
            by_step[int(scores["step"])] = scores
    return sorted(by_step.items())


def summarize(evaluations):
    """The record of one finished run from its evaluations: final and best val mIoU,
    per-class IoU of both, and the curve of val mIoU vs step."""
    if not evaluations:
        raise ValueError("no evaluation results: the run did not evaluate")
    final_step, final = evaluations[-1]
    best_step, best = max(evaluations, key=lambda item: (item[1]["miou"], -item[0]))
    return dict(final_step=final_step, miou=final["miou"],
                per_class_iou=final["per_class_iou"],
                pixel_accuracy=final.get("pixel_accuracy"), best_step=best_step,
                best_miou=best["miou"], best_per_class_iou=best["per_class_iou"],
                curve=[[step, scores["miou"]] for step, scores in evaluations])


def keep_best(model_dir, step):
    """Copy the files of checkpoint `ckpt-<step>` into `<model_dir>/best/`; returns its
    prefix there."""
    files = glob.glob(os.path.join(model_dir, "checkpoints", f"ckpt-{step}.*"))
    if not files:
        raise FileNotFoundError(f"no checkpoint ckpt-{step} in {model_dir}/checkpoints "
                                "(raise --keep_checkpoints to keep every evaluated one)")
    best = os.path.join(model_dir, "best")
    shutil.rmtree(best, ignore_errors=True)
    os.makedirs(best)
    for path in files:
        shutil.copy2(path, best)
    return os.path.join(best, f"ckpt-{step}")


class LoadSampler:
    """The 1-minute load average, sampled every `every` seconds in a thread."""

    def __init__(self, every=30.0):
        self.samples, self.every = [os.getloadavg()[0]], every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.wait(self.every):
            self.samples.append(os.getloadavg()[0])

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.samples.append(os.getloadavg()[0])


def run_row(stem, seed, args):
    """Train one row (resuming if it was interrupted); returns its record, or None when
    train.py failed (the next rows still run)."""
    name = run_name(stem, seed)
    model_dir = os.path.join(args.runs_dir, name)
    flagfile = os.path.join("configs", "camvid", f"{stem}.cfg")
    cmd = [sys.executable, "train.py", f"--flagfile={flagfile}", f"--seed={seed}",
           f"--model_dir={model_dir}", f"--data_root={args.data_root}", "--noprogress"]
    log_path = os.path.join(args.log_dir, f"{name}.log")
    resumed = bool(glob.glob(os.path.join(model_dir, "checkpoints", "ckpt-*")))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.time()
    with LoadSampler() as load, open(log_path, "a", encoding="utf-8") as log:
        code = subprocess.call(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    wall = time.time() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if code:
        print(f"{name}: train.py exited with {code}; see {log_path}", flush=True)
        return None
    record = summarize(read_evaluations(os.path.join(REPO, model_dir)))
    add_student_scores(record, stem, model_dir, args.data_root)
    record.update(
        row=stem, seed=seed, flagfile=flagfile, command=" ".join(cmd[1:]),
        best_checkpoint=os.path.relpath(keep_best(os.path.join(REPO, model_dir),
                                                  record["best_step"]), REPO),
        wall_s=round(wall, 1),
        cpu_s=round(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 1),
        load_average=dict(mean=round(statistics.fmean(load.samples), 2),
                          min=round(min(load.samples), 2), max=round(max(load.samples), 2)),
        resumed=resumed, cpus=os.cpu_count(), date=time.strftime("%Y-%m-%d %H:%M UTC",
                                                                 time.gmtime()))
    return record


def add_student_scores(record, stem, model_dir, data_root):
    """For a row whose method evaluates an EMA teacher: evaluate the student of the run's
    final checkpoint (`iseg.cli.evaluate --semi_weights=student`) and add `student_miou`
    and `student_per_class_iou` to `record`. Other rows: unchanged."""
    from iseg.semi.methods import weights_source

    method = stem.split("/")[1] if stem.startswith("semi/") else "none"
    if method == "supervised" or weights_source(method) != "teacher":
        return record
    cmd = [sys.executable, "-m", "iseg.cli.evaluate",
           f"--flagfile={os.path.join('configs', 'camvid', stem)}.cfg",
           f"--model_dir={model_dir}", f"--data_root={data_root}", "--semi_weights=student",
           "--noprogress"]
    subprocess.run(cmd, cwd=REPO, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    folder = os.path.join(REPO, model_dir, "eval_student")
    path = max(glob.glob(os.path.join(folder, "*_results.json")), key=os.path.getmtime)
    with open(path, encoding="utf-8") as f:
        scores = json.load(f)
    record.update(student_miou=scores["miou"], student_per_class_iou=scores["per_class_iou"])
    return record


# ------------------------------------------------------------------------------- report


def write_record(name, record, results_dir=RESULTS):
    """Write the record of run `name` to `<results_dir>/camvid_<name>.json`."""
    with open(os.path.join(results_dir, f"camvid_{name}.json"), "w", encoding="utf-8") as f:
        json.dump(record, f, indent=1)


def load_records(results_dir):
    """{(stem, seed): record} of the finished runs."""
    records = {}
    for path in glob.glob(os.path.join(results_dir, "camvid_*_s*.json")):
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
        records[(record["row"], record["seed"])] = record
    return records


def compare(method, baseline):
    """How a method's final mIoUs (one per seed) compare with its baseline's: the mean
    difference, the seed spread (the larger max - min of the two), and the verdict."""
    if len(method) < 2 or len(baseline) < 2:
        return None
    diff = statistics.fmean(method) - statistics.fmean(baseline)
    spread = max(max(method) - min(method), max(baseline) - min(baseline))
    return dict(diff=diff, spread=spread, beats=diff > spread)


def comparison_cells(c):
    """The table cells of a `compare` result: difference, spread, verdict."""
    if c is None:
        return "| | not yet run (needs both seeds of both rows) |"
    return (f"{100 * c['diff']:+.1f} | {100 * c['spread']:.1f} | "
            f"{'yes' if c['beats'] else 'no'} |")


def _pct(value):
    return f"{100 * value:.1f}"


def unfinished_curves(runs_dir, records, rows=ROWS):
    """{(stem, seed): [[step, val mIoU], ...]} of the runs under `runs_dir` that have
    evaluated but not finished (no record)."""
    curves = {}
    for _, stem, seed in run_order(rows):
        evaluations = read_evaluations(os.path.join(runs_dir, run_name(stem, seed)))
        if (stem, seed) not in records and evaluations:
            curves[(stem, seed)] = [[step, scores["miou"]] for step, scores in evaluations]
    return curves


def report_tables(records, unfinished=None, rows=ROWS, comparisons=COMPARISONS):
    """The markdown of the CamVid tables for `records` (see `load_records`); rows without
    a record are "not yet run", with the last evaluation of an `unfinished` run."""
    unfinished = unfinished or {}
    lines = ["| row | flag file | seed | val mIoU (final) | best (step) | wall min | CPU min "
             "| idle wall min (CPU / 2) | load avg |", "|---|---|---|---|---|---|---|---|---|"]
    classes = None
    for label, stem, seeds in rows:
        for seed in seeds:
            r = records.get((stem, seed))
            if r is None:
                last = unfinished.get((stem, seed))
                note = (f" (unfinished: {_pct(last[-1][1])} at step {last[-1][0]})"
                        if last else "")
                lines.append(f"| {label} | `configs/camvid/{stem}.cfg` | {seed} | "
                             f"not yet run{note} | | | | | |")
                continue
            classes = classes or list(r["per_class_iou"])
            lines.append(
                f"| {label} | `configs/camvid/{stem}.cfg` | {seed} | {_pct(r['miou'])} | "
                f"{_pct(r['best_miou'])} ({r['best_step']}) | {r['wall_s'] / 60:.1f}"
                f"{' (resumed)' if r.get('resumed') else ''} | "
                f"{r['cpu_s'] / 60:.1f} | {r['cpu_s'] / 120:.1f} | "
                f"{r['load_average']['mean']:.1f} |")
    if classes:
        lines += ["", "Per-class IoU (%, final checkpoint):", "",
                  "| row | seed | " + " | ".join(classes) + " |",
                  "|---|---|" + "---|" * len(classes)]
        for label, stem, seeds in rows:
            for seed in seeds:
                r = records.get((stem, seed))
                if r is not None:
                    lines.append(f"| {label} | {seed} | " + " | ".join(
                        _pct(r["per_class_iou"][c]) for c in classes) + " |")
    lines += ["", "| comparison | mean difference | seed spread | beats the baseline by more "
              "than the seed spread? |", "|---|---|---|---|"]
    stems = {label: (stem, seeds) for label, stem, seeds in rows}
    for method, baseline in comparisons:
        scores = [[records[(stem, s)]["miou"] for s in seeds if (stem, s) in records]
                  for stem, seeds in (stems[method], stems[baseline])]
        lines.append(f"| {method} vs {baseline} | " + comparison_cells(compare(*scores)))
    return "\n".join(lines + student_tables(records, rows, comparisons))


def student_tables(records, rows, comparisons):
    """Markdown lines for the rows whose records have a student score (`student_miou`:
    methods that evaluate an EMA teacher): teacher vs student per run, and the students
    against the baseline; [] when there are none."""
    students = [(label, stem, seed, records[(stem, seed)]) for label, stem, seeds in rows
                for seed in seeds if "student_miou" in records.get((stem, seed), {})]
    if not students:
        return []
    lines = ["", "EMA-teacher rows: the teacher (evaluated and reported, as the methods do) and "
             "the student of the same final checkpoint (`python -m iseg.cli.evaluate "
             "--flagfile=<row> --model_dir=<run> --semi_weights=student`):", "",
             "| row | seed | teacher val mIoU | student val mIoU |", "|---|---|---|---|"]
    lines += [f"| {label} | {seed} | {_pct(r['miou'])} | {_pct(r['student_miou'])} |"
              for label, _, seed, r in students]
    lines += ["", "| comparison (students) | mean difference | seed spread | beats the "
              "baseline by more than the seed spread? |", "|---|---|---|---|"]
    stems = {label: (stem, seeds) for label, stem, seeds in rows}
    for method, baseline in comparisons:
        stem, seeds = stems[method]
        mine = [records[(stem, s)]["student_miou"] for s in seeds
                if "student_miou" in records.get((stem, s), {})]
        if not mine:
            continue
        base = [records[(stems[baseline][0], s)]["miou"] for s in stems[baseline][1]
                if (stems[baseline][0], s) in records]
        lines.append(f"| {method} (student) vs {baseline} | "
                     + comparison_cells(compare(mine, base)))
    return lines


def write_doc_tables(markdown, doc, markers=MARKERS):
    """Replace the text between the `markers` of `doc` with `markdown`."""
    with open(doc, encoding="utf-8") as f:
        text = f.read()
    start, end = text.find(markers[0]), text.find(markers[1])
    if start < 0 or end < start:
        raise ValueError(f"{doc}: markers {markers[0]} ... {markers[1]} not found")
    text = text[:start + len(markers[0])] + "\n" + markdown + "\n" + text[end:]
    with open(doc, "w", encoding="utf-8") as f:
        f.write(text)


def plot_curves(records, path, unfinished=None, rows=ROWS):
    """Val mIoU vs step of every finished run (and, dotted, of the `unfinished` ones), one
    line each (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for index, (label, stem, seeds) in enumerate(rows):  # a colour a row, a style a seed
        for seed in seeds:
            r = records.get((stem, seed))
            curve = r["curve"] if r else (unfinished or {}).get((stem, seed))
            if curve:
                steps, miou = zip(*curve)
                ax.plot(steps, [100 * m for m in miou], marker="o", ms=3, color=f"C{index}",
                        ls=":" if r is None else "-" if seed == 0 else "--",
                        label=f"{label} (seed {seed}{'' if r else ', unfinished'})")
    ax.set(xlabel="training step", ylabel="val mIoU (%)",
           title="CamVid 240x180, val mIoU during training")
    ax.set_xlim(left=0)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def report(results_dir=RESULTS, runs_dir=RUNS, table="supervised"):
    """The tables of `table` (see TABLES) into its doc and its curves PNG from the records
    in `results_dir` (and the evaluations of unfinished runs under `runs_dir`)."""
    rows, comparisons, doc, curves, markers = TABLES[table]
    records = load_records(results_dir)
    records = {key: r for key, r in records.items() if key[0] in {s for _, s, _ in rows}}
    unfinished = unfinished_curves(runs_dir, records, rows)
    write_doc_tables(report_tables(records, unfinished, rows, comparisons), doc, markers)
    if records or unfinished:
        plot_curves(records, curves, unfinished, rows)


# ------------------------------------------------------------------------------- main


def pending_runs(results_dir, wanted=(), rows=ROWS):
    """[(stem, seed)] in run order that have no results file yet (of `wanted` stems)."""
    return [(stem, seed) for _, stem, seed in run_order(rows)
            if (not wanted or stem in wanted) and not os.path.exists(
                os.path.join(results_dir, f"camvid_{run_name(stem, seed)}.json"))]


def measure_step(stem, steps, data_root, extra_flags=()):
    """(CPU seconds, wall seconds) per training step of a row's model (its flag file, then
    `extra_flags`): the median of `steps` steps after one untimed (tracing) step, on random
    images and labels of the row's crop and batch size, with the row's optimizer."""
    import keras
    import numpy as np
    import tensorflow as tf

    from iseg.cli import flags as flags_lib
    from iseg.training import config as config_lib
    from iseg.training.optimizers import build_optimizer, prepare_optimizer

    flags_lib.define_train_flags()
    argv = ["train.py", f"--flagfile={os.path.join(REPO, 'configs', 'camvid', stem)}.cfg",
            f"--data_root={data_root}", *extra_flags]
    flags_lib.parse_flags(argv, "camvid_protocol")
    cfg = flags_lib.config_from_flags(argv)
    keras.utils.set_random_seed(0)
    meta = config_lib.dataset_meta(cfg)
    model = config_lib.build_model_from_config(cfg, meta)
    if cfg.semi != "none":
        step = _semi_step(cfg, meta, model)
    else:
        optimizer = build_optimizer(cfg.optimizer, cfg.lr)
        prepare_optimizer(optimizer, model)
        (h, w), n = cfg.crop_size, cfg.batch_size
        x = tf.random.uniform((n, h, w, 3), -1.0, 1.0, seed=0)
        y = tf.random.uniform((n, h, w), 0, 11, tf.int32, seed=0)

        @tf.function(autograph=False)  # no Python control flow to convert
        def step():
            with tf.GradientTape() as tape:
                loss = model.compute_loss(x=x, y=y, y_pred=model(x, training=True),
                                          training=True)
            grads = tape.gradient(loss, model.trainable_variables)
            optimizer.apply_gradients(zip(grads, model.trainable_variables))
            return loss

    float(step())
    times = []
    for _ in range(steps):
        cpu, wall = time.process_time(), time.perf_counter()
        float(step())
        times.append((time.process_time() - cpu, time.perf_counter() - wall))
    return tuple(float(np.median(t)) for t in zip(*times))


def _semi_step(cfg, meta, model):
    """`step()` -> loss: one `--semi` training step (the engine's, as train.py runs it) on
    random 0..255 images and labels of the row's crop and labeled / unlabeled batch sizes."""
    import tensorflow as tf

    from iseg.datasets.np_augment import input_normalization
    from iseg.semi.data import unlabeled_batch_size
    from iseg.semi.engine import SemiEngine
    from iseg.training import config as config_lib

    engine = SemiEngine(cfg, meta, model, input_normalization(model))
    optimizer = config_lib.optimizer_for(cfg, model, engine.extra_trainable_variables(),
                                         engine.extra_backbone_variables())
    (h, w), n, nu = cfg.crop_size, cfg.batch_size, unlabeled_batch_size(cfg)
    batch = {"image": tf.random.uniform((n, h, w, 3), 0.0, 255.0, seed=0),
             "label": tf.random.uniform((n, h, w), 0, meta.num_classes, tf.int32, seed=0)}
    for i in range(1, engine.method.unlabeled_streams + 1):
        tag = "" if i == 1 else str(i)
        batch[f"u_image{tag}"] = tf.random.uniform((nu, h, w, 3), 0.0, 255.0, seed=i)
        batch[f"u_ignore{tag}"] = tf.zeros((nu, h, w), tf.bool)
    iterator = iter(tf.data.Dataset.from_tensors(batch).repeat())
    train_step = engine.build_train_step(tf.distribute.get_strategy(), optimizer,
                                         lambda b: b)
    return lambda: train_step(iterator)["loss"]


def measure(rows, steps, data_root, extra_flags=()):
    """Print the CPU and wall seconds per step of each row (`--measure_steps`)."""
    print(f"{'row':24s} CPU s/step  wall s/step  load avg  {' '.join(extra_flags)}")
    for stem in rows:
        cpu, wall = measure_step(stem, steps, data_root, extra_flags)
        print(f"{stem:24s} {cpu:10.3f}  {wall:11.3f}  {os.getloadavg()[0]:8.2f}", flush=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data_root", default=os.environ.get("ISEG_DATA") or "data")
    p.add_argument("--source", default=os.path.join(REPO, "..", "shared", "datasets",
                                                    "camvid"))
    p.add_argument("--runs_dir", default=os.path.relpath(RUNS, REPO))
    p.add_argument("--log_dir", default=os.path.join(REPO, "runs", "camvid", "logs"))
    p.add_argument("--table", default="supervised", choices=sorted(TABLES),
                   help="The rows: the supervised table (docs/benchmarks.md) or the "
                   "semi-supervised one (docs/semi_supervised.md).")
    p.add_argument("--rows", default="", help="Comma-separated flag file stems (default: all).")
    p.add_argument("--report_only", action="store_true")
    p.add_argument("--student_scores", action="store_true",
                   help="Evaluate the student of the finished EMA-teacher rows that have "
                   "no student score yet (their run folders under --runs_dir), then report.")
    p.add_argument("--measure_steps", type=int, default=0,
                   help="Only time this many training steps of each row (random data).")
    p.add_argument("--measure_flags", default="",
                   help="Space-separated flags added to the rows' flags when timing.")
    args = p.parse_args(argv)
    args.data_root = os.path.abspath(args.data_root)
    runs_dir, rows = os.path.join(REPO, args.runs_dir), TABLES[args.table][0]
    if args.student_scores:
        for (stem, seed), record in load_records(RESULTS).items():
            if stem in {s for _, s, _ in rows} and "student_miou" not in record:
                name = run_name(stem, seed)
                add_student_scores(record, stem, os.path.join(args.runs_dir, name),
                                   args.data_root)
                write_record(name, record)
    if args.report_only or args.student_scores:
        return report(runs_dir=runs_dir, table=args.table)
    stems = [stem for _, stem, _ in rows]
    wanted = [r for r in args.rows.split(",") if r]
    unknown = sorted(set(wanted) - set(stems))
    if unknown:
        p.error(f"unknown --rows {', '.join(unknown)}; valid: {', '.join(stems)}")
    if args.measure_steps:
        return measure(wanted or stems, args.measure_steps, args.data_root,
                       args.measure_flags.split())
    folders = [(DATA_FOLDER, None)]
    if args.table == "semi":
        folders.append((SEMI_DATA_FOLDER, semi_labeled_stems()))
    for folder, keep in folders:
        data_dir = os.path.join(args.data_root, folder)
        if not os.path.isfile(os.path.join(data_dir, "dataset_info.json")):
            print(f"converting {args.source} (downscaled by {FACTOR}) into {data_dir}",
                  flush=True)
            prepare_data(args.source, data_dir, train_keep=keep)
    os.makedirs(args.log_dir, exist_ok=True)
    os.makedirs(RESULTS, exist_ok=True)
    for stem, seed in pending_runs(RESULTS, wanted, rows):
        name = run_name(stem, seed)
        print(f"{time.strftime('%H:%M:%S')} training {name}", flush=True)
        record = run_row(stem, seed, args)
        if record is None:
            continue
        write_record(name, record)
        print(f"{time.strftime('%H:%M:%S')} {name}: val mIoU {_pct(record['miou'])} (best "
              f"{_pct(record['best_miou'])}), {record['wall_s'] / 60:.1f} min wall, "
              f"{record['cpu_s'] / 60:.1f} CPU min", flush=True)
        report(runs_dir=runs_dir, table=args.table)
    return report(runs_dir=runs_dir, table=args.table)


if __name__ == "__main__":
    main()
