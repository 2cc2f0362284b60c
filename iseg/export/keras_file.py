"""The `.keras` file of a model (any Keras backend, no TensorFlow)."""

import os


def save_keras(model, path):
    """Save the whole model as a `.keras` file (reload with `keras.saving.load_model`)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + f".tmp-{os.getpid()}.keras"
    model.save(tmp)
    os.replace(tmp, path)
    return path
