"""Export: SavedModel with serving signatures (TensorFlow, imported on first use of
`export_saved_model`), and `.keras` saving (any backend)."""

from iseg.export.keras_file import save_keras


def export_saved_model(*args, **kwargs):
    """See `iseg.export.saved_model.export_saved_model`."""
    from iseg.export import saved_model  # pylint: disable=import-outside-toplevel

    return saved_model.export_saved_model(*args, **kwargs)


__all__ = ["export_saved_model", "save_keras"]
