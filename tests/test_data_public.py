"""The adapters on the real public data in ../shared/data (skipped with a message where it is absent), and
`iranker data fetch movielens-100k` from the package index."""

from __future__ import annotations

import json

import pytest

from iranker.data import build, ingest

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
