"""Export: SavedModel with serving signatures, and `.keras` saving."""

from iseg.export.saved_model import export_saved_model, save_keras
