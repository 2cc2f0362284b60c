import os
import pathlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture
def shared_dir():
    """`../shared` beside the repository; tests that need it skip when it is absent."""
    if not SHARED.is_dir():
        pytest.skip("../shared is not present")
    return SHARED


@pytest.fixture(autouse=True)
def _fresh_flags():
    """absl flags are process-wide: a test that parses them (a CLI run in this process, a
    flag file) must not leave its values to the next test."""
    yield
    import sys

    if "absl.flags" in sys.modules:
        sys.modules["absl.flags"].FLAGS.unparse_flags()
