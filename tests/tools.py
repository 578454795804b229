"""Real client programs from Debian: required in CI, skipped with a reason on a bare laptop."""

from __future__ import annotations

import os
import shutil

import pytest


def require(program: str) -> str:
    """The program's path; in CI (CI=true) a missing program fails instead of skipping."""
    path = shutil.which(program)
    if path is None:
        message = f"{program} is not installed (.ci/apt-packages.txt installs it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path
