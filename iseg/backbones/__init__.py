"""iseg.backbones."""
