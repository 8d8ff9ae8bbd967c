"""Write the host's pip package sources as a pip.conf for an image build (used by docker/build.sh).

    python3 docker/pipconf.py --engine podman --out pip.conf --mounts mounts --torch-from torch-index \
        --constraints constraints.txt

- reads `pip config list` (files and PIP_* variables; a variable wins over a file, as in pip) for index-url,
  extra-index-url, find-links, cert, trusted-host and default-timeout; nothing else (a host-wide `constraint` is
  the host's business, the image installs from the project's constraints.txt);
- local folders and files among them (a wheel folder, a file:// index, a CA bundle) are mounted read-only under
  /run/host with podman (one `-v` option per line in --mounts) and the pip.conf names them there; docker builds
  cannot mount them, so they are left out with a note;
- writes an empty --out when there is nothing to pass (the Dockerfile's defaults then apply);
- when a local find-links folder holds the torch wheel that --constraints pins, writes an empty line to
  --torch-from (torch then comes from those sources instead of download.pytorch.org).
"""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote, urlparse

OPTIONS = ("index-url", "extra-index-url", "find-links", "cert", "trusted-host", "default-timeout", "timeout")
PREFIX = "/run/host"


def pip_config() -> dict[str, str]:
    proc = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True,
                          check=False)
    files: dict[str, str] = {}
    env: dict[str, str] = {}
    for line in proc.stdout.splitlines():
        m = re.match(r"^([^.=]*)\.([a-z-]+)=(.*)$", line.strip())
        if not m or m.group(2) not in OPTIONS:
            continue
        section, key, raw = m.groups()
        try:
            value = " ".join(shlex.split(raw))
        except ValueError:
            value = raw.strip("'\"")
        key = "default-timeout" if key == "timeout" else key
        if section == ":env:":
            env[key] = value
        elif section in ("global", "install", "download"):
            files[key] = value
    return {**files, **env}


def local_path(value: str) -> Path | None:
    if value.startswith("file://"):
        return Path(unquote(urlparse(value).path))
    if value.startswith("/"):
        return Path(value)
    return None


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--engine", required=True)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--mounts", required=True, type=Path)
    ap.add_argument("--torch-from", required=True, type=Path)
    ap.add_argument("--constraints", type=Path, default=Path("constraints.txt"))
    args = ap.parse_args()

    conf = pip_config()
    mounts: dict[Path, str] = {}
    lines: list[str] = []
    torch_dirs: list[Path] = []
    for key in OPTIONS:
        if key not in conf:
            continue
        kept = []
        for value in conf[key].split():
            path = local_path(value)
            if path is None or key == "trusted-host":
                kept.append(value)
                continue
            if not path.exists():
                print(f"pipconf: {key} {value}: not on this host, left out", file=sys.stderr)
                continue
            if args.engine != "podman":
                print(f"pipconf: {key} {value}: a local path, which a {args.engine} build cannot mount; left out",
                      file=sys.stderr)
                continue
            inside = PREFIX + str(path)
            # a file:// index's pages link to their files relatively (../../files/...): mount the index's root
            root = path.parent if key.endswith("index-url") and path.is_dir() else path
            mounts[root] = f"-v={root}:{PREFIX}{root}:ro"
            kept.append(("file://" + inside) if value.startswith("file://") else inside)
            if key == "find-links" and path.is_dir():
                torch_dirs.append(path)
        if kept:
            lines.append(f"{key} = {' '.join(kept)}")

    args.out.write_text(("[global]\n" + "\n".join(lines) + "\n") if lines else "")
    args.mounts.write_text("".join(m + "\n" for m in mounts.values()))
    pin = None
    if args.constraints.exists():
        m = re.search(r"^torch==(\S+)", args.constraints.read_text(), re.MULTILINE)
        pin = m.group(1) if m else None
    if pin and any(d.glob(f"torch-{pin}-*.whl") for d in torch_dirs):
        args.torch_from.write_text("")
        print(f"pipconf: torch {pin} from the local wheel folder", file=sys.stderr)
    if lines:
        print("pipconf: package sources for the build:\n  " + "\n  ".join(lines), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
