"""iseg: a Keras 3 / TensorFlow model zoo for semantic segmentation."""
from setuptools import find_packages, setup

setup(
    name="iseg",
    version="0.1.0",
    description="Keras 3 semantic segmentation zoo: CAR, CAA, KSAC and their baselines",
    python_requires=">=3.10",
    packages=find_packages(include=["iseg", "iseg.*"]),
    py_modules=["train"],
    install_requires=[
        "tensorflow==2.21.0",
        "keras==3.15.1",
        "numpy>=1.26,<3",
        "absl-py>=2.1",
        "pillow>=10.0",
        "tqdm>=4.66",
        "h5py>=3.10",
        # the DejaVu / STIX fonts of the synthetic text renderer (iseg.text.synth)
        "matplotlib>=3.8",
    ],
    extras_require={
        # jax and torch: the backend smoke tests (the pure-Keras code on JAX and PyTorch);
        # pytest-xdist: the suite runs in 2 worker processes (pytest.ini)
        "test": ["pytest>=8.0", "pytest-xdist>=3.5", "jax[cpu]>=0.4.30", "torch==2.13.0",
                 "lmdb>=1.4"],
        # reading the LMDB text-recognition benchmarks (iseg.text.records.read_lmdb)
        "text": ["lmdb>=1.4"],
    },
    entry_points={
        "console_scripts": [
            "iseg-train=iseg.cli.train:run",
            "iseg-evaluate=iseg.cli.evaluate:run",
            "iseg-export=iseg.cli.export:run",
            "iseg-predict=iseg.cli.predict:run",
            "iseg-convert=iseg.cli.convert:run",
            "iseg-partition=iseg.cli.partition:run",
            "iseg-benchmark=iseg.cli.benchmark:run",
        ]
    },
)
