"""iseg.export."""
