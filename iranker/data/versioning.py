"""DVC: the data folder is tracked by `<repo>/data.dvc`; ingest adds the new data and pushes it to the default remote.

The project's own DVC configuration (`.dvc/config`) names a local directory remote (`.dvc-store/` at the
repository root). For S3 or MinIO, add a remote and make it the default, e.g.::

    pip install dvc-s3
    dvc remote add -d minio s3://iranker-data
    dvc remote modify minio endpointurl http://minio.minio.svc:9000
    dvc remote modify --local minio access_key_id ...      # credentials go to .dvc/config.local, never to git
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("DVC_NO_ANALYTICS", "1")


def find_root(path: Path) -> Path | None:
    """The closest folder at or above `path` that holds a `.dvc` directory."""
    p = Path(path).resolve()
    for d in [p, *p.parents]:
        if (d / ".dvc").is_dir():
            return d
    return None


def tracked_target(root: Path, out: Path) -> Path:
    """What DVC tracks for `out`: the top-level folder of the repository that contains it (e.g. `data/`)."""
    rel = Path(out).resolve().relative_to(root)
    return root / rel.parts[0]


def ignore_provenance(root: Path) -> bool:
    """Make sure the repository's `.dvcignore` names the provenance sidecar, so that the code that wrote a dataset
    is recorded beside it without changing its data version. True when the line was added."""
    from iranker.data import PROVENANCE

    path = Path(root) / ".dvcignore"
    text = path.read_text() if path.exists() else ""
    if PROVENANCE in text.split():
        return False
    path.write_text(text + ("" if not text or text.endswith("\n") else "\n")
                    + f"# what wrote each dataset (code version, commit): recorded, not part of its data version\n"
                      f"{PROVENANCE}\n")
    return True


def track(out: Path, push: bool = True, progress: Callable[[str], None] | None = None) -> str:
    """`dvc add` the top-level folder holding `out`, then `dvc push` it; returns what happened, in words."""
    from dvc.repo import Repo

    say = progress or (lambda _m: None)
    root = find_root(out)
    if root is None:
        return f"not tracked: no DVC repository at or above {out} (run `dvc init` there to version it)"
    if ignore_provenance(root):
        say(f"{root / '.dvcignore'}: added provenance.json (recorded beside each dataset, not versioned)")
    target = tracked_target(root, out)
    with Repo(str(root)) as repo:
        say(f"dvc add {target.relative_to(root)}")
        repo.add(str(target))
        dvc_file = target.with_name(target.name + ".dvc")
        status = f"tracked by {dvc_file.relative_to(root)} (md5 {data_version(dvc_file)})"
        if not push:
            return status + "; not pushed (--no-push)"
        remote = repo.config.get("core", {}).get("remote")
        if not remote:
            return status + "; not pushed: no default DVC remote (dvc remote add -d NAME URL)"
        say(f"dvc push -> remote {remote!r}")
        repo.push([str(dvc_file)])
        return status + f"; pushed to remote {remote!r}"


def pull(path: Path, progress: Callable[[str], None] | None = None) -> str:
    """`dvc pull` in the DVC repository at or above `path`: the data its .dvc files name, from the default remote.

    A remote that does not hold that data - on a fresh clone the local directory remote (`.dvc-store/`, never
    committed) holds nothing yet - is a DataError that says so and how to rebuild the data; nothing is changed."""
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    from iranker.data.base import DataError

    say = progress or (lambda _m: None)
    root = find_root(path)
    if root is None:
        raise DataError(f"{path}: no DVC repository at or above it (run `dvc init` there to version data)")
    with Repo(str(root)) as repo:
        remote = repo.config.get("core", {}).get("remote")
        if not remote:
            raise DataError(f"{root}/.dvc/config: no default remote (dvc remote add -d NAME URL)")
        url = repo.config.get("remote", {}).get(remote, {}).get("url", "?")
        wanted = ", ".join(f"{f.name} (md5 {data_version(f)})" for f in sorted(root.glob("*.dvc")) if f.is_file())
        say(f"dvc pull <- remote {remote!r} ({url})")
        try:
            stats = repo.pull()
        except DvcException as e:  # CheckoutError among them: the remote lacks the data
            local = "://" not in url
            where = Path(url) if Path(url).is_absolute() else (root / ".dvc" / url).resolve()
            empty = local and (not where.exists() or not any(where.iterdir()))
            why = (f"the remote {remote!r} ({where}) {'holds nothing yet' if empty else 'lacks that data'}"
                   if local else f"the remote {remote!r} ({url}) lacks that data")
            raise DataError(
                f"dvc pull: {why}; the repository names {wanted}. A local directory remote lives on the machine "
                "that ingested the data and is not part of a clone. Rebuild the data where you are: `make demo` "
                "writes the version data.dvc names here (its ingest steps produce byte-identical folders), "
                "`make data` the built-in samples under data/samples/; or add the remote that holds it (dvc remote "
                f"add -d NAME URL). DVC said: {str(e).strip()[:300]}") from e
    return f"pulled from remote {remote!r}: {sum(len(v) for v in stats.values() if isinstance(v, list))} changes"


def data_version(dvc_file: Path) -> str:
    """The md5 DVC records for the tracked folder: the version evaluations and model cards cite."""
    import yaml

    meta = yaml.safe_load(Path(dvc_file).read_text())
    return str(meta["outs"][0]["md5"])
