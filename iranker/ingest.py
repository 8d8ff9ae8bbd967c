"""Ingest: a public format -> a validated, versioned dataset folder (`iranker data ingest`, the pipeline's ingest
steps). It joins the layers below it - `iranker.data` builds and writes, `iranker.validation` checks with Great
Expectations, `iranker.data.versioning` tracks with DVC - so that none of them imports another's caller.

    result = ingest("recbole", "path/to/ml-100k", "data/ml-100k")    # validate, write atomically, DVC add + push
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from iranker.data import PROVENANCE, build, portable_source, provenance, render, write_dataset
from iranker.validation import ValidationFailed, validate_built


@dataclasses.dataclass
class IngestResult:
    out: Path
    manifest: dict[str, Any]
    report: Any
    dvc: str



def ingest(source: str, path: str | Path, out: str | Path, params: dict[str, str] | None = None,
           dvc: bool = True, push: bool = True, progress: Callable[[str], None] | None = None) -> IngestResult:
    """Build, validate, write atomically, then `dvc add` the data folder and push it (when inside a DVC repo).

    Raises DataError for unreadable input and `iranker.validation.ValidationFailed` when the new data fails its
    Great Expectations suites; in both cases nothing under `out` and nothing in the DVC remote changes.
    """
    say = progress or (lambda _m: None)
    say(f"reading {source} data from {path}")
    built = build(source, path, params)
    built.path = portable_source(path, out)
    say(f"built {len(built.instances)} instances; validating with Great Expectations")
    report = validate_built(built)
    if not report.success:
        raise ValidationFailed(report)
    files = render(built)
    files["validation.md"] = report.to_markdown().encode()
    files[PROVENANCE] = (json.dumps(provenance(), indent=1) + "\n").encode()
    write_dataset(files, Path(out))
    say(f"wrote {out}")
    manifest = json.loads(files["manifest.json"])
    status = "not tracked (--no-dvc)"
    if dvc:
        from iranker.data.versioning import track

        status = track(Path(out), push=push, progress=say)
    return IngestResult(out=Path(out), manifest=manifest, report=report, dvc=status)
