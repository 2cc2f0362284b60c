"""Train a segmentation model: `python train.py --flagfile=configs/demo/shapes.cfg`."""

from iseg.cli.train import run

if __name__ == "__main__":
    run()
