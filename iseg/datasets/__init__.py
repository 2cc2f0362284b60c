"""iseg.datasets."""
