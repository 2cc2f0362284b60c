"""iseg.datasets: dataset specs, converters, TFRecord IO, the tf.data pipeline, synthetic data.

Importing this package does not import TensorFlow; `iseg.datasets.pipeline`,
`iseg.datasets.tfrecord` and `iseg.datasets.augment` (the tf.data path) do. The input path
of the other Keras backends never does: `records` (TFRecord / tf.train.Example IO),
`np_augment` (the same training views in NumPy) and `pydataset` (`keras.utils.PyDataset`
batches), nor do the converter and the synthetic data when TensorFlow is not installed.
"""

from iseg.datasets.info import load_dataset_info
from iseg.datasets.specs import DATASETS, IGNORE_LABEL, DatasetSpec, get_dataset_spec


def convert_dataset(*args, **kwargs):
    """See `iseg.datasets.convert.convert_dataset`."""
    from iseg.datasets import convert  # pylint: disable=import-outside-toplevel

    return convert.convert_dataset(*args, **kwargs)


__all__ = [
    "DATASETS",
    "IGNORE_LABEL",
    "DatasetSpec",
    "convert_dataset",
    "get_dataset_spec",
    "load_dataset_info",
]
