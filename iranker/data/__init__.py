"""Data: public formats -> canonical tables (parquet) -> ranking instances (JSONL) with a manifest, validated, versioned.

    built = build("recbole", "path/to/ml-100k", {"negative_sampling": "popularity"})
    result = iranker.ingest.ingest("recbole", "path/to/ml-100k", "data/ml-100k")    # + validate, DVC add + push

A dataset folder holds `tables/<name>.parquet`, `instances.jsonl`, `manifest.json` (source, parameters, the md5 that
DVC records for each input, the md5 of each output, counts), `validation.md` (the Great Expectations report) and
`provenance.json` (the package version, a hash of the data code and the git commit that wrote it). The same inputs
and parameters give byte-identical data files whatever the code's version: a data version (what DVC hashes) follows
the data. `provenance.json` is what DVC does not hash (`PROVENANCE` is listed in the repository's `.dvcignore`), so
an edit to the data code that leaves its output alone - an error message, a refactor - changes no data version,
while an edit that changes what is written changes the manifest's output hashes and so the version.
Nothing is replaced unless the new data passed validation.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from iranker.data.base import DataError, md5_file, parse_params
from iranker.schema import RankingInstance

__all__ = [
    "PROVENANCE",
    "SOURCES",
    "Built",
    "DataError",
    "build",
    "load_dataset_instances",
    "load_sources",
    "load_tables",
    "read_manifest",
    "write_dataset",
]


@dataclasses.dataclass(frozen=True)
class Source:
    name: str
    scenario: str
    params: type
    read: Callable
    build: Callable
    help: str


def _rec_build(target: str):
    def build_(tables, params, dataset):
        from iranker.data.recommendation import build_instances

        return build_instances(tables, params, dataset, target)
    return build_


def _sources() -> dict[str, Source]:
    from iranker.data import feedback, passage, recommendation, routing

    return {
        "recbole": Source("recbole", "recommendation", recommendation.RecParams, recommendation.read_recbole,
                          _rec_build("first"), "RecBole atomic files NAME.inter + NAME.item (e.g. MovieLens-100K)"),
        "llmrank": Source("llmrank", "recommendation", recommendation.LLMRankParams, recommendation.read_llmrank,
                          _rec_build("last"), "LLMRank history -> next item files + candidate lists (Games-6k)"),
        "trec-dl": Source("trec-dl", "passage", passage.PassageParams, passage.read_passage,
                          passage.build_instances, "first-stage JSON with texts, or run + collection.tsv + "
                          "queries.tsv; with TREC qrels"),
        "routerbench": Source("routerbench", "routing", routing.RoutingParams, routing.read_routing,
                              routing.build_instances, "RouterBench CSVs: per query, quality and cost per model"),
        "feedback": Source("feedback", "", feedback.FeedbackParams, feedback.read_feedback, feedback.build_instances,
                           "an inference-log collector folder (`iranker collect --out DIR`): served calls and their "
                           "outcomes"),
        "instances": Source("instances", "", _InstancesParams, _read_instances, _build_passthrough,
                            "iranker instances JSONL, passed through validation"),
    }


@dataclasses.dataclass
class _InstancesParams:
    dataset: str = ""


def _read_instances(path: Path, params: _InstancesParams):
    from iranker.io import load_instances

    if not path.is_file():
        raise DataError(f"{path}: no such file (expected an instances JSONL file)")
    try:
        instances = load_instances(path)
    except ValueError as e:
        raise DataError(str(e)) from None
    return {"_instances": instances}, [path]


def _build_passthrough(tables, params, dataset):
    return tables.pop("_instances"), {}


SOURCES: dict[str, Source] = _sources()


@dataclasses.dataclass
class Built:
    source: str
    path: str
    dataset: str
    params: dict[str, Any]
    tables: dict[str, pd.DataFrame]
    instances: list[RankingInstance]
    inputs: list[dict[str, Any]]
    stats: dict[str, Any]


PROVENANCE = "provenance.json"  # beside the data, never hashed by DVC (the repository's .dvcignore names it)


def provenance() -> dict[str, str]:
    """What wrote a dataset, recorded beside it but outside its data version: the package version and git commit
    (`iranker.version.code_version`) and a hash of the code that turns inputs into data."""
    from iranker.version import code_version

    here = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for p in sorted([*here.glob("*.py"), here.parent / "schema.py", here.parent / "ingest.py"]):
        h.update(p.name.encode() + p.read_bytes())
    return {**code_version(), "data_code_sha256": h.hexdigest()[:16]}


def build(source: str, path: str | Path, params: dict[str, str] | None = None) -> Built:
    """Read a source in its public format and build canonical tables and instances (nothing is written)."""
    if source not in SOURCES:
        raise DataError(f"unknown source {source!r}; choose one of {', '.join(SOURCES)}")
    src = SOURCES[source]
    p = parse_params(src.params, params, source)
    path = Path(path)
    tables, inputs = src.read(path, p)
    dataset = getattr(p, "dataset", "") or _default_dataset(path)
    instances, stats = src.build(tables, p, dataset)
    if not instances:
        raise DataError(f"{path}: no instances could be built ({json.dumps(stats)})")
    return Built(source=source, path=str(path), dataset=dataset, params=dataclasses.asdict(p), tables=tables,
                 instances=instances, stats=stats,
                 inputs=[{"file": _rel(f, path), "md5": md5_file(f), "size": f.stat().st_size} for f in inputs])


def _default_dataset(path: Path) -> str:
    name = path.name if path.is_dir() else path.name.split(".")[0]
    return name or "data"


def _rel(f: Path, base: Path) -> str:
    root = base if base.is_dir() else base.parent
    try:
        return f.relative_to(root).as_posix()
    except ValueError:
        return f.name


def _parquet_bytes(df: pd.DataFrame) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), buf, compression="zstd")
    return buf.getvalue()


def _counts(instances: list[RankingInstance]) -> dict[str, Any]:
    return {"instances": len(instances),
            "by_split": dict(sorted(Counter(i.split for i in instances).items())),
            "by_scenario": dict(sorted(Counter(i.scenario for i in instances).items()))}


def render(built: Built) -> dict[str, bytes]:
    """The files of a dataset folder, as bytes (deterministic)."""
    files: dict[str, bytes] = {}
    for name, df in sorted(built.tables.items()):
        files[f"tables/{name}.parquet"] = _parquet_bytes(df)
    files["instances.jsonl"] = "".join(i.model_dump_json(exclude_none=True) + "\n"
                                       for i in built.instances).encode()
    scenarios = sorted({i.scenario for i in built.instances})
    manifest = {
        "source": built.source, "path": built.path, "dataset": built.dataset,
        "scenario": scenarios[0] if len(scenarios) == 1 else scenarios,
        "params": built.params, "inputs": built.inputs,
        "outputs": {k: hashlib.md5(v).hexdigest() for k, v in files.items()},
        "counts": {**_counts(built.instances), **built.stats},
    }
    files["manifest.json"] = (json.dumps(manifest, indent=1, sort_keys=False) + "\n").encode()
    return files


def write_dataset(files: dict[str, bytes], out: Path) -> None:
    """Replace `out` with the given files in one rename: a failure leaves the previous folder as it was."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.new-"))
    try:
        for rel, data in files.items():
            p = tmp / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(data)
        old = None
        if out.exists():
            old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-"))
            os.replace(out, old / "d")
        os.replace(tmp, out)
        if old:
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def portable_source(path: str | Path, out: str | Path) -> str:
    """How a manifest names its source, so that the same data gets the same version on every machine: relative to
    the repository that holds `out` (its DVC root) when the source lies inside it, else relative to the project
    (the working copy, or /app in the image), else as the user named it."""
    from iranker.data.versioning import find_root

    src = Path(path).expanduser().resolve()
    for root in (find_root(Path(out)), SAMPLES_DIR.parent):
        if root is None:
            continue
        try:
            return src.relative_to(Path(root).resolve()).as_posix()
        except ValueError:
            continue
    return str(path)


SAMPLES_DIR = Path(__file__).resolve().parent.parent.parent / "samples"
# The built-in samples in public formats (written by samples/make_samples.py), one folder per source.
SAMPLE_SOURCES = (("recbole", "recbole"), ("llmrank", "llmrank"), ("trec-dl", "trec-dl"),
                  ("routerbench", "routerbench"))


def sample_instances(samples: str | Path | None = None) -> list[RankingInstance]:
    """Every instance of the built-in samples, built by the real adapters with default parameters."""
    root = Path(samples) if samples else SAMPLES_DIR
    return [i for source, folder in SAMPLE_SOURCES for i in build(source, root / folder).instances]


def load_sources(sources: list[str]) -> list[tuple[dict[str, pd.DataFrame], list[RankingInstance], dict[str, Any]]]:
    """(tables, instances, manifest) of each source: a dataset folder, an instances JSONL file (no tables) or
    'samples' (the built-in samples, built by the real adapters): what training and evaluation read."""
    from iranker.io import load_instances

    out = []
    for src in sources:
        if src == "samples":
            for source, folder in SAMPLE_SOURCES:
                b = build(source, SAMPLES_DIR / folder)
                out.append((b.tables, b.instances, {"source": source, "dataset": b.dataset, "params": b.params,
                                                    "scenario": b.instances[0].scenario}))
            continue
        p = Path(src)
        if p.is_dir():
            if not (p / "instances.jsonl").exists():
                raise FileNotFoundError(f"{p}: no instances.jsonl; is it a dataset folder written by "
                                        "`iranker data ingest`?")
            out.append((load_tables(p), load_dataset_instances(p), read_manifest(p)))
        elif p.exists():
            rows = load_instances(p)
            out.append(({}, rows, {"source": "instances", "scenario": rows[0].scenario if rows else ""}))
        else:
            raise FileNotFoundError(f"{src}: no such file or folder (expected a dataset folder, an instances "
                                    "JSONL file or 'samples')")
    return out


def load_tables(folder: str | Path) -> dict[str, pd.DataFrame]:
    folder = Path(folder) / "tables"
    return {p.stem: pd.read_parquet(p) for p in sorted(folder.glob("*.parquet"))}


def read_manifest(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / "manifest.json"
    if not path.exists():
        raise DataError(f"{path}: no such file; is {folder} a dataset folder written by `iranker data ingest`?")
    return json.loads(path.read_text())


def load_dataset_instances(folder: str | Path) -> list[RankingInstance]:
    from iranker.io import load_instances

    return load_instances(Path(folder) / "instances.jsonl")
