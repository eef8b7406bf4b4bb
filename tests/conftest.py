"""Shared pytest fixtures."""

import os
import sys

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# train.py and evaluate.py are importable in tests whatever the working directory.
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)


@pytest.fixture(scope="session")
def shared_data():
    """The folder of real data sets (see its README.md).

    Taken from the environment variable `DMFA_SHARED_DATA`, by default the
    `shared/data` folder next to the repository root; tests that use it are
    skipped when it is absent.
    """
    path = os.environ.get(
        "DMFA_SHARED_DATA", os.path.join(REPO_ROOT, "..", "shared", "data")
    )
    if not os.path.isdir(path):
        pytest.skip(
            f"shared data folder not found: {path} (set DMFA_SHARED_DATA to its location)"
        )
    return path
