"""Evaluation results as files: `<name>_results.json` / `.txt` (and the confusion
matrix), named after the split, the inference settings and the step (no TensorFlow)."""

import json
import os

import numpy as np
from absl import logging

from iseg.metrics.confusion import format_results_table


def results_name(split, inference=None, step=None):
    """`<split>_<mode>[_scales...][_flip][_step<N>]`: the evaluation a results file holds
    (split, whole-image or sliding-window inference, scales, flip, checkpoint step)."""
    inference = inference or {}
    parts = [split, inference.get("mode", "whole")]
    scales = [float(s) for s in inference.get("scales", (1.0,))]
    if scales != [1.0]:
        parts.append("scales" + "-".join(f"{s:g}" for s in scales))
    if inference.get("flip"):
        parts.append("flip")
    if step is not None:
        parts.append(f"step{int(step)}")
    return "_".join(parts)


def _free_name(out_dir, name):
    """`name`, or `name-2`, `name-3`... when results of that name exist (never replaced)."""
    candidate, k = name, 1
    while os.path.exists(os.path.join(out_dir, f"{candidate}_results.json")):
        k += 1
        candidate = f"{name}-{k}"
    return candidate


def write_results(scores, out_dir, *, name=None, save_confusion=False, step=None):
    """Write `<name>_results.json` and `<name>_results.txt` (and the confusion matrix);
    `name` defaults to `results_name` of the scores' split, inference and `step`. Existing
    results are never replaced: a taken name gets a `-2`, `-3`... suffix. Returns the path
    of the JSON file."""
    os.makedirs(out_dir, exist_ok=True)
    name = _free_name(out_dir, name or results_name(
        scores.get("split", "eval"), scores.get("inference"), step))
    record = {k: v for k, v in scores.items() if k not in ("confusion_matrix", "samples")}
    if step is not None:
        record["step"] = int(step)
    table = format_results_table(scores, title=f"{scores.get('split', name)} "
                                 f"({scores.get('num_images', '?')} images)")
    path = os.path.join(out_dir, f"{name}_results.json")
    _atomic_write(path, json.dumps(record, indent=1))
    _atomic_write(os.path.join(out_dir, f"{name}_results.txt"), table + "\n")
    if save_confusion:
        cm = scores["confusion_matrix"]
        np.save(os.path.join(out_dir, f"{name}_confusion.npy"), cm)
        names = list(scores["per_class_iou"])
        lines = ["gt\\pred," + ",".join(names)] + [
            names[i] + "," + ",".join(str(int(x)) for x in row) for i, row in enumerate(cm)]
        _atomic_write(os.path.join(out_dir, f"{name}_confusion.csv"), "\n".join(lines) + "\n")
    logging.info("results written to %s", path)
    return path


def _atomic_write(path, text):
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)
