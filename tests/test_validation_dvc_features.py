"""Great Expectations suites catch each corruption; DVC round-trips in a temporary repository; Feast serves a known
user's history. All on the built-in samples, with the real libraries."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
from conftest import ROOT, run_dvc

from iranker.data import DataError
from iranker.ingest import ingest
from iranker.validation import validate_dir

SAMPLES = ROOT / "samples"


@pytest.fixture(scope="module")
def mixed_dir(tmp_path_factory):
    """A valid dataset folder of the recbole samples."""
    out = tmp_path_factory.mktemp("ds") / "rec"
    ingest("recbole", SAMPLES / "recbole", out, dvc=False)
    return out


def _rows(d):
    return [json.loads(l) for l in (d / "instances.jsonl").read_text().splitlines()]


def _write(d, rows):
    (d / "instances.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def _dup_id(rows):
    rows[1]["id"] = rows[0]["id"]


def _dup_candidate(rows):
    rows[0]["candidates"][1]["id"] = rows[0]["candidates"][0]["id"]


def _unknown_relevance(rows):
    rows[0]["relevance"]["not-a-candidate"] = 1.0


def _no_relevant(rows):
    rows[2]["relevance"] = {}


def _empty_candidates(rows):
    rows[3]["candidates"] = []
    rows[3]["relevance"] = {}


def _long_text(rows):
    rows[0]["candidates"][0]["text"] = "x" * 9000


def _empty_text(rows):
    rows[0]["candidates"][0]["text"] = ""


def _split_overlap(rows):
    rows[1]["user_id"] = rows[0]["user_id"]
    rows[1]["split"] = "test" if rows[0]["split"] != "test" else "train"


CORRUPT = {
    "duplicate instance ids": (_dup_id, "expect_column_values_to_be_unique", "id"),
    "duplicate candidate ids": (_dup_candidate, "expect_column_pair_values_to_be_equal",
                                "n_candidates=n_unique_candidate_ids"),
    "relevance on an unknown candidate": (_unknown_relevance, "expect_column_values_to_be_between",
                                          "n_unknown_relevance_ids"),
    "no relevant candidate": (_no_relevant, "expect_column_values_to_be_between where scenario == 'recommendation'",
                              "n_relevant"),
    "no candidates": (_empty_candidates, "expect_column_values_to_be_between", "n_candidates"),
    "text too long": (_long_text, "expect_column_values_to_be_between", "max_text_chars"),
    "empty text": (_empty_text, "expect_column_values_to_be_between", "min_text_chars"),
    "a user in two splits": (_split_overlap, "expect_column_values_to_be_between", "group_splits"),
}


@pytest.mark.parametrize("case", list(CORRUPT))
def test_instance_suite_catches(tmp_path, mixed_dir, case):
    corrupt, expectation, target = CORRUPT[case]
    d = tmp_path / "d"
    shutil.copytree(mixed_dir, d)
    assert validate_dir(d).success
    rows = _rows(d)
    corrupt(rows)
    _write(d, rows)
    report = validate_dir(d)
    assert not report.success
    assert (expectation, target) in {(c.expectation, c.target) for c in report.failures}


def test_table_suites_catch_duplicate_items_and_unknown_references(tmp_path, mixed_dir):
    import pandas as pd

    d = tmp_path / "d"
    shutil.copytree(mixed_dir, d)
    items = pd.read_parquet(d / "tables" / "items.parquet")
    pd.concat([items, items.head(1)]).to_parquet(d / "tables" / "items.parquet", index=False)
    inter = pd.read_parquet(d / "tables" / "interactions.parquet")
    inter.loc[0, "item_id"] = "no-such-item"
    inter.to_parquet(d / "tables" / "interactions.parquet", index=False)
    failed = {(c.suite, c.target): c for c in validate_dir(d).failures}
    assert ("recommendation.items", "item_id") in failed
    assert failed[("recommendation.interactions", "unknown_item_id")].examples == ["no-such-item"]


def test_validate_cli_writes_a_report_and_exits_non_zero(tmp_path, mixed_dir):
    d = tmp_path / "d"
    shutil.copytree(mixed_dir, d)
    rows = _rows(d)
    _dup_id(rows)
    _write(d, rows)
    proc = subprocess.run([sys.executable, "-m", "iranker.cli", "data", "validate", str(d)], capture_output=True,
                          text=True, timeout=300, check=False)
    assert proc.returncode == 1
    report = (d / "validation.md").read_text()
    assert "**FAILED**" in report and "| instances | expect_column_values_to_be_unique | id | FAILED |" in report
    assert json.loads(proc.stdout)["success"] is False


# ------------------------------------------------------------------------------------------------------------ DVC



def test_dvc_round_trip_and_a_failed_ingest_leaves_data_and_remote_alone(tmp_path):
    repo, remote = tmp_path / "repo", tmp_path / "remote"
    repo.mkdir()
    run_dvc(repo, "init", "--no-scm", "-q")
    run_dvc(repo, "remote", "add", "-d", "local", str(remote))
    result = ingest("trec-dl", SAMPLES / "trec-dl", repo / "data" / "passage", progress=print)
    assert "tracked by data.dvc" in result.dvc and "pushed to remote 'local'" in result.dvc
    files = {p.relative_to(repo): p.read_bytes() for p in (repo / "data").rglob("*")
             if p.is_file() and p.name != "provenance.json"}  # recorded beside the data, not versioned
    dvc_file = (repo / "data.dvc").read_text()
    remote_files = sorted(p.relative_to(remote) for p in remote.rglob("*") if p.is_file())
    assert remote_files

    # bad input: nothing changes, locally or in the remote
    bad = tmp_path / "bad"
    shutil.copytree(SAMPLES / "trec-dl", bad)
    (bad / "qrels.sample.txt").write_text("1000 0 7000\n")
    with pytest.raises(DataError, match="qrels.sample.txt:1: expected 'qid 0 docid grade'"):
        ingest("trec-dl", bad, repo / "data" / "passage")
    assert (repo / "data.dvc").read_text() == dvc_file
    assert sorted(p.relative_to(remote) for p in remote.rglob("*") if p.is_file()) == remote_files

    # remove the data and the cache, pull it back from the remote
    shutil.rmtree(repo / "data")
    shutil.rmtree(repo / ".dvc" / "cache")
    run_dvc(repo, "pull", "-q")
    assert {p.relative_to(repo): p.read_bytes() for p in (repo / "data").rglob("*") if p.is_file()} == files

    # a second dataset under data/ updates the same data.dvc and pushes again
    ingest("routerbench", SAMPLES / "routerbench", repo / "data" / "routing")
    assert (repo / "data.dvc").read_text() != dvc_file
    assert len(list(remote.rglob("*"))) > len(remote_files)


def test_pull_on_a_fresh_clone_explains_an_empty_remote_then_pulls_once_it_holds_the_data(tmp_path):
    """A clone gets data.dvc but not the local directory remote: `iranker data pull` says that the remote holds
    nothing yet and how to rebuild, and changes nothing; with the remote filled it restores the data."""
    from iranker.data.versioning import pull

    origin, remote = tmp_path / "origin", tmp_path / "origin-store"
    origin.mkdir()
    run_dvc(origin, "init", "--no-scm", "-q")
    run_dvc(origin, "remote", "add", "-d", "local", str(remote))
    ingest("trec-dl", SAMPLES / "trec-dl", origin / "data" / "passage")
    files = {p.relative_to(origin): p.read_bytes() for p in (origin / "data").rglob("*")
             if p.is_file() and p.name != "provenance.json"}  # recorded beside the data, not versioned

    clone = tmp_path / "clone"  # what git carries: .dvc/config and data.dvc, no cache, no data, no remote
    (clone / ".dvc").mkdir(parents=True)
    shutil.copy(origin / "data.dvc", clone / "data.dvc")
    shutil.copy(origin / ".dvc" / "config", clone / ".dvc" / "config")
    run_dvc(clone, "remote", "modify", "local", "url", ".dvc-store")  # as the project names it: beside .dvc/, untracked
    with pytest.raises(DataError, match=r"remote 'local' \(.*\.dvc-store\) holds nothing yet.*make demo") as err:
        pull(clone)
    assert "data.dvc (md5 " in str(err.value)
    assert not (clone / "data").exists() and (clone / "data.dvc").read_text() == (origin / "data.dvc").read_text()

    shutil.copytree(remote, clone / ".dvc-store")  # the remote the data was pushed to
    assert pull(clone).startswith("pulled from remote 'local'")
    assert {p.relative_to(clone): p.read_bytes() for p in (clone / "data").rglob("*") if p.is_file()} == files


def test_two_checkouts_in_different_folders_get_the_same_data_version(tmp_path):
    """The samples ingested in two checkouts at different places give byte-identical dataset folders and the same
    data.dvc: the manifest names its source relative to the repository, and nothing machine-specific is hashed."""
    versions = []
    for where in ("a/repo", "b/deeper/other-name"):
        repo = tmp_path / where
        shutil.copytree(SAMPLES, repo / "samples")
        run_dvc(repo, "init", "--no-scm", "-q")
        for source, folder in (("trec-dl", "trec-dl"), ("routerbench", "routerbench")):
            ingest(source, repo / "samples" / folder, repo / "data" / folder, push=False)
        files = {p.relative_to(repo).as_posix(): p.read_bytes() for p in (repo / "data").rglob("*") if p.is_file()}
        versions.append((files, (repo / "data.dvc").read_text()))
    (a_files, a_dvc), (b_files, b_dvc) = versions
    assert a_files == b_files and a_dvc == b_dvc
    manifest = json.loads(a_files["data/trec-dl/manifest.json"])
    assert manifest["path"] == "samples/trec-dl" and str(tmp_path) not in json.dumps(manifest)
    # a source outside the repository is recorded as the user named it
    outside = ingest("trec-dl", SAMPLES / "trec-dl", tmp_path / "x" / "p", dvc=False)
    assert outside.manifest["path"] in ("samples/trec-dl", str(SAMPLES / "trec-dl"))


def test_outside_a_dvc_repository_ingest_says_so(tmp_path):
    result = ingest("trec-dl", SAMPLES / "trec-dl", tmp_path / "data" / "p")
    assert result.dvc.startswith("not tracked: no DVC repository")


# ---------------------------------------------------------------------------------------------------------- Feast

def test_feast_serves_a_known_users_history(tmp_path, mixed_dir):
    from iranker import features

    repo = tmp_path / "feature_repo"
    repo.mkdir()
    for f in ("feature_store.yaml", "definitions.py"):
        shutil.copy(ROOT / "feature_repo" / f, repo / f)
    features.build_feature_tables(mixed_dir, repo, history=20)
    assert features.apply(repo) == VIEWS
    assert features.materialize(repo) == {"user_context": 16, "item_attributes": _train_interactions(mixed_dir),
                                          "model_quality": 0, "model_task_quality": 0}

    titles = {r[0]: f"{r[1]} ({r[2]})" for r in (l.split("\t") for l in
                                                  (SAMPLES / "recbole" / "movies.item").read_text().splitlines()[1:])}
    seq = [r[1] for r in (l.split("\t") for l in (SAMPLES / "recbole" / "movies.inter").read_text().splitlines()[1:])
           if r[0] == "5"]
    users = features.UserFeatures(repo)
    assert users.history("5") == [titles[i] for i in seq[-20:]]
    ctx = users.context(["5", "unknown-user"])
    assert ctx[0]["n_interactions"] == len(seq) == 22
    assert ctx[0]["favourite_classes"][:2] == ["Animation", "Children's"]  # user 5's favourite genre group
    assert ctx[1] is None and users.history("unknown-user") is None


VIEWS = ["dataset", "item", "item_attributes", "llm", "model_quality", "model_task_quality", "task", "user",
         "user_context"]


def _train_interactions(folder) -> int:
    """item_attributes holds one row per interaction of the training users (a point-in-time series)."""
    from iranker.data import load_dataset_instances, load_tables

    train = {i.user_id for i in load_dataset_instances(folder) if i.split == "train"}
    inter = load_tables(folder)["interactions"]
    return int(inter["user_id"].astype(str).isin(train).sum())


def test_features_need_recommendation_data(tmp_path):
    from iranker import features

    ingest("trec-dl", SAMPLES / "trec-dl", tmp_path / "p", dvc=False)
    with pytest.raises(DataError, match="user features come from recommendation data"):
        features.build_feature_tables(tmp_path / "p", ROOT / "feature_repo")


@pytest.mark.slow
def test_features_cli_apply_materialize_get(tmp_path, mixed_dir):
    repo = tmp_path / "fr"
    repo.mkdir()
    for f in ("feature_store.yaml", "definitions.py"):
        shutil.copy(ROOT / "feature_repo" / f, repo / f)

    def run(*args):
        proc = subprocess.run([sys.executable, "-m", "iranker.cli", "features", *args, "--repo", str(repo)],
                              capture_output=True, text=True, timeout=300, check=False)
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)

    assert run("apply", "--data", str(mixed_dir))["applied"] == VIEWS
    assert run("materialize")["materialized"] == {"user_context": 16, "item_attributes": _train_interactions(mixed_dir),
                                                  "model_quality": 0, "model_task_quality": 0}
    got = run("get", "5", "nobody")
    assert got["nobody"] is None and len(got["5"]["history_titles"]) == 20 and got["5"]["n_interactions"] == 22
