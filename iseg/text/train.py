"""Training and evaluation of the text recognizers on the iseg engine.

`train_text` hands the engine (`iseg.training.trainer.train`: strategy, optimizer,
schedule, checkpoints with resume, NaN stop, TensorBoard scalars) a text model and the text
input pipeline, then evaluates word accuracy and normalised edit distance per split, writes
`eval/text_results.json` and TensorBoard image / text summaries of sample predictions.
"""

import dataclasses
import json
import os

import numpy as np
import tensorflow as tf
from absl import logging

from iseg.text.charset import Charset
from iseg.text.metrics import WordMetrics
from iseg.text.models import build_text_model
from iseg.text.pipeline import build_text_dataset, items_dataset
from iseg.text.records import INFO_FILE, read_label_file, read_lmdb


@dataclasses.dataclass
class TextOptions:
    """What a text run adds to the engine's `TrainConfig` (which gives data_dir, model_dir,
    crop_size = the model's input height,width, batch size, optimizer, steps, ...)."""

    model: str = "faclstm"
    model_options: dict = dataclasses.field(default_factory=dict)
    charset: str = Charset().chars
    case_sensitive: bool = False
    max_length: int = 25
    channels: int = 1
    beam_width: int = 1
    mask_shrink: float = 0.5
    eval_splits: tuple = ("test",)
    eval_batch_size: int = 64


def text_meta(text):
    from iseg.training.config import DatasetMeta  # pylint: disable=import-outside-toplevel

    chars = list(text.charset)
    return DatasetMeta(num_classes=len(chars) + 1, class_names=["<eos>"] + chars,
                       palette=[], ignore_label=-1, name="text")


def make_model_fn(text, image_size):
    def model_fn(cfg=None, meta=None):
        del cfg, meta
        model = build_text_model(
            text.model, charset=text.charset, case_sensitive=text.case_sensitive,
            max_length=text.max_length, image_size=tuple(image_size), channels=text.channels,
            beam_width=text.beam_width, **text.model_options)
        model.build(model.input_shape_for())
        return model
    return model_fn


def eval_dataset(data_dir, split, text, image_size):
    return build_text_dataset(
        data_dir, split, charset=Charset(text.charset, text.case_sensitive),
        max_length=text.max_length, image_size=tuple(image_size), channels=text.channels,
        batch_size=text.eval_batch_size, training=False)


def is_text_source(path):
    """True for what evaluation reads without converting: an LMDB folder (with
    `data.mdb`) or a `path<TAB>word` label file."""
    return os.path.isfile(os.path.join(path, "data.mdb")) or os.path.isfile(path)


def source_name(path):
    """The name results use for a source: the LMDB folder's name, the label file's name
    without its extension."""
    path = os.path.normpath(path)
    return os.path.basename(path) if os.path.isdir(path) else os.path.splitext(
        os.path.basename(path))[0]


def open_eval_dataset(model, source, data_dir=None, batch_size=64):
    """Evaluation batches `{"images", "words"}` for `model` (its input size and channels)
    of `source`: an LMDB folder or label file (`is_text_source`), else a split of the
    converted dataset in `data_dir`."""
    size = tuple(model.image_size)
    if is_text_source(source):
        reader = read_lmdb if os.path.isdir(source) else read_label_file
        return items_dataset(lambda: reader(source), image_size=size, channels=model.channels,
                             batch_size=batch_size)
    if not data_dir or not os.path.isfile(os.path.join(data_dir, INFO_FILE)):
        raise FileNotFoundError(f"{source!r} is neither an LMDB folder, a label file nor a "
                                f"split of a converted text dataset (no {INFO_FILE} in "
                                f"{data_dir})")
    return build_text_dataset(data_dir, source, charset=model.charset,
                              max_length=model.max_length, image_size=size,
                              channels=model.channels, batch_size=batch_size, training=False)


def load_text_model(checkpoint, text=None, image_size=None):
    """A trained text model with the weights of `checkpoint` (a prefix, or a model_dir:
    its newest). The network is the one recorded in the run's `run_config.json`; without
    it, the one `text` and `image_size` describe."""
    import keras  # pylint: disable=import-outside-toplevel

    from iseg.training import checkpoints  # pylint: disable=import-outside-toplevel
    from iseg.training.config import read_run_config  # pylint: disable=import-outside-toplevel

    path = checkpoints.resolve_checkpoint(checkpoint)
    run_dir = os.path.dirname(os.path.dirname(path))
    if os.path.isfile(os.path.join(run_dir, "run_config.json")):
        record = read_run_config(run_dir)["model"]
        model = keras.saving.deserialize_keras_object(
            dict(record, config=dict(record["config"], dtype="float32")))
        model.ensure_built()
    elif text is None:
        raise FileNotFoundError(f"no run_config.json in {run_dir}: give the text model flags")
    else:
        model = make_model_fn(text, image_size)()
    checkpoints.restore_model(model, path)
    return model, path


def evaluate_text(model, dataset, beam_width=1, max_batches=None, num_samples=0):
    """{"num_images", "word_accuracy", "normalized_edit_distance", "samples"}; samples are
    (uint8 image, truth, prediction) of the first `num_samples` images."""
    recognize = tf.function(lambda x: model.recognize(x, beam_width), reduce_retracing=True)
    metrics, samples = WordMetrics(), []
    for i, batch in enumerate(dataset):
        if max_batches is not None and i >= max_batches:
            break
        tokens, _ = recognize(batch["images"])
        predictions = [model.charset.decode(t) for t in np.asarray(tokens)]
        truths = [w.decode("utf-8") for w in batch["words"].numpy()]
        metrics.update(predictions, truths)
        for image, truth, pred in zip(batch["images"].numpy(), truths, predictions):
            if len(samples) < num_samples:
                samples.append((np.clip((image + 1) * 127.5, 0, 255).astype(np.uint8),
                                truth, pred))
    return dict(metrics.result(), samples=samples)


def write_text_results(results, model_dir, step):
    """`<model_dir>/eval/text_results.json` and TensorBoard summaries (scalars, sample
    images, a text table of truth / prediction)."""
    from iseg.training import summaries  # pylint: disable=import-outside-toplevel

    os.makedirs(os.path.join(model_dir, "eval"), exist_ok=True)
    table = {split: {k: v for k, v in r.items() if k != "samples"}
             for split, r in results.items()}
    with open(os.path.join(model_dir, "eval", "text_results.json"), "w",
              encoding="utf-8") as f:
        json.dump(dict(step=int(step), results=table), f, indent=1)
    writer = tf.summary.create_file_writer(os.path.join(model_dir, "logs", "eval"))
    with writer.as_default(step=int(step)):
        for split, r in results.items():
            summaries.scalar(f"{split}/word_accuracy", r["word_accuracy"])
            summaries.scalar(f"{split}/normalized_edit_distance",
                             r["normalized_edit_distance"])
            if r["samples"]:
                images = np.stack([np.repeat(s[0], 3 // s[0].shape[-1], axis=-1)
                                   for s in r["samples"]])
                lines = "\n".join(f"| {s[1]} | {s[2]} |" for s in r["samples"])
                summaries.image(f"{split}/samples", images,
                                description="| truth | prediction |\n|---|---|\n" + lines)
    writer.flush()
    return table


def train_text(cfg, text, after_training=None):
    """Train `text.model` with the engine settings in `cfg` (a `TrainConfig`), then
    evaluate every split of `text.eval_splits`. Returns the engine's result dict plus
    `text_scores` {split: scores}."""
    from iseg.training.trainer import train  # pylint: disable=import-outside-toplevel

    image_size = tuple(cfg.crop_size)
    charset = Charset(text.charset, text.case_sensitive)

    def train_dataset_fn(input_context, seed):
        return build_text_dataset(
            cfg.data_dir, "train", charset=charset, max_length=text.max_length,
            image_size=image_size, channels=text.channels, batch_size=cfg.batch_size,
            training=True, seed=seed, input_context=input_context,
            shuffle_buffer=cfg.shuffle_buffer, mask_shrink=text.mask_shrink)

    engine_cfg = dataclasses.replace(cfg, evaluate_at_end=False, eval_every=0)
    result = train(engine_cfg, model_fn=make_model_fn(text, image_size),
                   train_dataset_fn=train_dataset_fn, meta=text_meta(text))
    result["text_scores"] = None
    if result["is_chief"] and cfg.evaluate_at_end:
        scores = {}
        for split in text.eval_splits:
            scores[split] = evaluate_text(
                result["model"], eval_dataset(cfg.data_dir, split, text, image_size),
                beam_width=text.beam_width, max_batches=cfg.eval_steps,
                num_samples=cfg.num_summary_images)
            logging.info("%s: word accuracy %.4f, normalised edit distance %.4f", split,
                         scores[split]["word_accuracy"],
                         scores[split]["normalized_edit_distance"])
        write_text_results(scores, cfg.model_dir, result["step"])
        result["text_scores"] = scores
    if after_training is not None and result["is_chief"]:
        after_training(result["model"], result)
    return result
