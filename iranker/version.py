"""What code wrote an artifact: the package version and the git commit (recorded as provenance, never hashed into a
data version)."""

from __future__ import annotations

import functools
import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@functools.cache
def code_version() -> dict[str, str]:
    """The package version and the git commit of the code (IRANKER_GIT_SHA in images, else `git rev-parse`)."""
    from iranker import __version__

    sha = os.environ.get("IRANKER_GIT_SHA", "")
    if not sha:
        try:
            sha = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT, capture_output=True,
                                 text=True, timeout=10, check=True).stdout.strip()
            dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                                   capture_output=True, text=True, timeout=10, check=True).stdout.strip()
            sha += "-dirty" if dirty else ""
        except (OSError, subprocess.SubprocessError):
            sha = "unknown"
    return {"iranker": __version__, "git": sha}
