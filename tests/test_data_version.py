"""The data version follows the data: data.dvc changes when what ingest writes changes, and only then.

The committed data.dvc must be the version `make demo` (and `iranker pipeline run --local`) writes on a fresh clone;
otherwise a user's clean checkout turns dirty after the demo.
"""

from __future__ import annotations

import json
import shutil
import sys

import yaml
from conftest import ROOT, run_dvc

from iranker.data import PROVENANCE
from iranker.ingest import ingest

sys.path.insert(0, str(ROOT))




def _dvc_repo(path):
    path.mkdir(parents=True)
    run_dvc(path, "init", "--no-scm", "-q")
    shutil.copy(ROOT / ".dvcignore", path / ".dvcignore")
    return path


def test_committed_data_dvc_is_the_version_the_pipeline_ingests(tmp_path):
    """Ingest the built-in samples exactly as `make demo` does (the pipeline's ingest steps with its defaults) in a
    temporary DVC repository, and compare the version with the committed data.dvc."""
    from pipelines.iranker_pipeline import default_params, ingest_only

    repo = _dvc_repo(tmp_path / "repo")
    steps = ingest_only(data_dir=str(repo / default_params()["data_dir"]), artifacts=tmp_path / "artifacts")
    assert all("tracked by data.dvc" in s["dvc"] for s in steps.values())
    made = yaml.safe_load((repo / "data.dvc").read_text())["outs"][0]
    committed = yaml.safe_load((ROOT / "data.dvc").read_text())["outs"][0]
    assert made == committed, (
        f"data.dvc is stale: the pipeline's ingest steps now write md5 {made['md5']} ({made['nfiles']} files, "
        f"{made['size']} bytes), the committed data.dvc names {committed['md5']} ({committed['nfiles']} files, "
        f"{committed['size']} bytes). What ingest writes has changed: run `make data-version` (iranker pipeline "
        "ingest) in a checkout whose data/ holds only pipeline/, e.g. a fresh clone, and commit data.dvc with the "
        "change.")
    # the provenance is recorded beside every dataset and in the step's artifact metadata, not in the version
    for scenario, meta in steps.items():
        prov = json.loads((repo / "data" / "pipeline" / scenario / PROVENANCE).read_text())
        assert meta["code_version"] == prov and set(prov) == {"iranker", "git", "data_code_sha256"}


def test_a_change_to_the_data_code_that_leaves_the_data_alone_keeps_the_version(tmp_path, monkeypatch):
    from iranker import ingest as ingest_module

    repo = _dvc_repo(tmp_path / "repo")
    ingest("trec-dl", ROOT / "samples" / "trec-dl", repo / "data" / "p", push=False)
    before = (repo / "data.dvc").read_text()
    first = (repo / "data" / "p" / PROVENANCE).read_text()
    # another version of the code (an edited error message) that writes the same data
    monkeypatch.setattr(ingest_module, "provenance", lambda: {"iranker": "9.9", "git": "edited", "data_code_sha256": "x"})
    ingest("trec-dl", ROOT / "samples" / "trec-dl", repo / "data" / "p", push=False)
    assert (repo / "data" / "p" / PROVENANCE).read_text() != first  # recorded ...
    assert (repo / "data.dvc").read_text() == before  # ... but not versioned
    # what ingest writes changes: a new version
    ingest("trec-dl", ROOT / "samples" / "trec-dl", repo / "data" / "p", {"depth": "5"}, push=False)
    assert (repo / "data.dvc").read_text() != before


def test_ingest_adds_the_provenance_line_to_a_repository_without_it(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    run_dvc(repo, "init", "--no-scm", "-q")
    assert PROVENANCE not in (repo / ".dvcignore").read_text()
    ingest("trec-dl", ROOT / "samples" / "trec-dl", repo / "data" / "p", push=False)
    assert (repo / ".dvcignore").read_text().splitlines()[-1] == PROVENANCE
    before = (repo / "data.dvc").read_text()
    (repo / "data" / "p" / PROVENANCE).write_text("{}")
    run_dvc(repo, "add", "-q", "data")
    assert (repo / "data.dvc").read_text() == before
