"""iseg.cli."""
