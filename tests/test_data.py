"""Adapters on the built-in samples (public formats written by samples/make_samples.py): protocols, determinism,
bad input. Real public data is in test_data_public.py."""

from __future__ import annotations

import csv
import json
import shutil

import pytest
from conftest import ROOT

from iranker.data import DataError, build, render
from iranker.data.routing import PREFERENCE_WEIGHTS
from iranker.ingest import ingest

SAMPLES = ROOT / "samples"


def _lines(path):
    return path.read_text().splitlines()


def test_recbole_protocol_first_20_history_21st_target_unseen_negatives():
    built = build("recbole", SAMPLES / "recbole")
    assert len(built.instances) == 16 and built.dataset == "recbole"
    titles = {r[0]: f"{r[1]} ({r[2]})" for r in (l.split("\t") for l in _lines(SAMPLES / "recbole" / "movies.item")[1:])}
    seq = [r[1] for r in (l.split("\t") for l in _lines(SAMPLES / "recbole" / "movies.inter")[1:]) if r[0] == "3"]
    inst = next(i for i in built.instances if i.user_id == "3")
    assert inst.history == [titles[i] for i in seq[:20]]
    assert inst.relevance == {seq[20]: 1.0}
    ids = [c.id for c in inst.candidates]
    assert len(ids) == 20 and seq[20] in ids and not (set(ids) - {seq[20]}) & set(seq)
    assert {c.text for c in inst.candidates} == {titles[i] for i in ids}
    positions = {[c.id for c in i.candidates].index(next(iter(i.relevance))) for i in built.instances}
    assert len(positions) > 3  # candidates are shuffled: the target is not always in the same place


def test_llmrank_history_then_target_with_published_candidates():
    built = build("llmrank", SAMPLES / "llmrank", {"history": "5"})
    assert len(built.instances) == 12
    rows = [l.split("\t") for l in _lines(SAMPLES / "llmrank" / "Games-sample.test.inter")[1:]]
    pools = {l.split("\t")[0]: l.split("\t")[1].split() for l in _lines(SAMPLES / "llmrank" / "Games-sample.random")}
    u, hist, target = rows[4]
    inst = next(i for i in built.instances if i.user_id == u)
    assert len(inst.history) == 5 and inst.relevance == {target.strip(): 1.0}
    negs = [c.id for c in inst.candidates if c.id != target.strip()]
    eligible = [i for i in pools[u] if i not in hist.split() and i != target.strip()]
    assert sorted(negs) == sorted(eligible[:19])  # the first 19 eligible of the published random list


def test_popularity_negatives_differ_from_random_and_stay_unseen():
    rand = {i.id: i for i in build("recbole", SAMPLES / "recbole").instances}
    pop = build("recbole", SAMPLES / "recbole", {"negative_sampling": "popularity"}).instances
    assert any({c.id for c in p.candidates} != {c.id for c in rand[p.id].candidates} for p in pop)
    for p in pop:
        assert set(p.relevance) == set(rand[p.id].relevance)


def test_trec_dl_json_and_trec_layouts_give_the_same_instances():
    a = build("trec-dl", SAMPLES / "trec-dl", {"dataset": "s"}).instances
    b = build("trec-dl", SAMPLES / "trec-dl-tsv", {"dataset": "s", "run": "bm25.run"}).instances
    assert [i.model_dump() for i in a] == [i.model_dump() for i in b]
    qrels = {(l.split()[0], l.split()[2]): int(l.split()[3]) for l in _lines(SAMPLES / "trec-dl" / "qrels.sample.txt")}
    for inst in a:
        qid = inst.id.split("-q")[1]
        assert inst.relevance == {c.id: float(qrels[(qid, c.id)]) for c in inst.candidates if qrels[(qid, c.id)] > 0}
    assert len(build("trec-dl", SAMPLES / "trec-dl", {"depth": "3"}).instances[0].candidates) == 3


def test_trec_dl_candidates_carry_first_stage_rank_and_score(tmp_path):
    data = json.loads((SAMPLES / "trec-dl" / "sample_bm25_top8.json").read_text())
    built = build("trec-dl", SAMPLES / "trec-dl", {"depth": "5"})
    for entry, inst in zip(data, built.instances, strict=True):
        hits = sorted(entry["hits"], key=lambda h: h["rank"])[:5]
        assert [c.id for c in inst.candidates] == [str(h["docid"]) for h in hits]  # first-stage order, as before
        assert [c.features.model_dump(exclude_none=True) for c in inst.candidates] == [
            {"rank": k, "score": h["score"]} for k, h in enumerate(hits, 1)]
    # no score in the input: the rank alone (a rank is a position in the list as ingested, 1 = top)
    folder = _copy(tmp_path, "trec-dl")
    for entry in data:
        for h in entry["hits"]:
            del h["score"]
            h["rank"] += 10
    (folder / "sample_bm25_top8.json").write_text(json.dumps(data))
    inst = build("trec-dl", folder).instances[0]
    assert [c.features.model_dump(exclude_none=True) for c in inst.candidates] == [
        {"rank": k} for k in range(1, 9)]
    assert '"features":{"rank":1}' in render(build("trec-dl", folder))["instances.jsonl"].decode()


def test_trec_dl_qrels_accept_any_iteration_token_and_name_bad_lines(tmp_path):
    folder = _copy(tmp_path, "trec-dl")
    qrels = folder / "qrels.sample.txt"
    lines = _lines(qrels)
    qrels.write_text("".join((l.replace(" 0 ", " Q0 ", 1) if k % 2 else l) + "\n" for k, l in enumerate(lines)))
    assert "Q0" in qrels.read_text()
    assert ([i.model_dump() for i in build("trec-dl", folder).instances]
            == [i.model_dump() for i in build("trec-dl", SAMPLES / "trec-dl").instances])
    for bad, pattern in [("1000 Q0 7001", r"qrels\.sample\.txt:3: expected 'qid 0 docid grade' \(4 fields"),
                         ("1000 Q0 7001 high", r"qrels\.sample\.txt:3: grade: expected an integer, got 'high'"),
                         ("1000 Q0 7001 1 2.5 bm25", r"qrels\.sample\.txt:3: .*got 6 - a TREC run")]:
        qrels.write_text("\n".join([*lines[:2], bad, *lines[3:]]) + "\n")
        with pytest.raises(DataError, match=pattern):
            build("trec-dl", folder)


@pytest.mark.parametrize("value,pattern", [(264014.0, r"\.qid: expected an integer or a string"),
                                           (True, r"\.qid: expected an integer or a string")])
def test_trec_dl_json_query_ids_are_integers_or_strings(tmp_path, value, pattern):
    folder = _copy(tmp_path, "trec-dl")
    data = json.loads((folder / "sample_bm25_top8.json").read_text())
    for h in data[0]["hits"]:
        h["qid"] = value
    (folder / "sample_bm25_top8.json").write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"sample_bm25_top8\.json: entry \[0\]\.hits\[0\]" + pattern):
        build("trec-dl", folder)
    # the same query id as an integer or as a string reads the same (the qrels spell it as text)
    for h in data[0]["hits"]:
        h["qid"] = str(json.loads((SAMPLES / "trec-dl" / "sample_bm25_top8.json").read_text())[0]["hits"][0]["qid"])
    (folder / "sample_bm25_top8.json").write_text(json.dumps(data))
    assert ([i.model_dump() for i in build("trec-dl", folder).instances]
            == [i.model_dump() for i in build("trec-dl", SAMPLES / "trec-dl").instances])


def test_exact_splits_hold_the_fractions_within_one_group_and_are_seeded():
    from iranker.data.base import assign_split, assign_splits_exact, parse_split

    for spec in ("train:0.4,validation:0.2,test:0.4", "train:0.8,validation:0.1,test:0.1", "test:1.0",
                 "train:0.7,test:0.3", "train:0.0,validation:0.5,test:0.5"):
        fracs = parse_split(spec)
        for n in (1, 2, 3, 7, 21, 43, 53, 100, 501):
            groups = [f"query:{k}" for k in range(n)]
            got = assign_splits_exact(groups, 0, fracs)
            assert sorted(got) == sorted(groups)
            for name, frac in fracs:
                assert abs(sum(v == name for v in got.values()) - frac * n) <= 1, (spec, n, name)
    groups = [f"query:{k}" for k in range(43)]
    fracs = parse_split("train:0.4,validation:0.2,test:0.4")
    a = assign_splits_exact(groups, 0, fracs)
    assert a == assign_splits_exact(reversed(groups), 0, fracs)  # the input order does not matter
    assert a != assign_splits_exact(groups, 1, fracs)            # the seed does
    # the order is the per-key splits' seeded hash: both cut the same order, so one's train set contains the other's
    one = [("train", 0.5), ("test", 0.5)]
    per_key = {g for g in groups if assign_split(g, 0, one) == "train"}
    exact = {g for g, v in assign_splits_exact(groups, 0, one).items() if v == "train"}
    assert len(exact) in (21, 22) and (exact <= per_key or per_key <= exact)


def test_trec_dl_splits_by_query_with_exact_fractions_and_keeps_test_by_default():
    assert {i.split for i in build("trec-dl", SAMPLES / "trec-dl").instances} == {"test"}
    built = build("trec-dl", SAMPLES / "trec-dl", {"split": "train:0.4,validation:0.2,test:0.4"})
    assert sorted(i.split for i in built.instances) == ["test", "train", "validation"]
    assert len({i.id for i in built.instances}) == 3


def test_routing_utilities_follow_the_preference_weights():
    built = build("routerbench", SAMPLES / "routerbench")
    with open(SAMPLES / "routerbench" / "sample_test.csv", newline="") as f:
        row = next(csv.DictReader(f))
    qid = f"{row['eval_name']}:{row['']}"
    models = [k for k in row if f"{k}|total_cost" in row]
    for pref, (a, b) in PREFERENCE_WEIGHTS.items():
        util = {m: a * float(row[m]) - b * float(row[f"{m}|total_cost"]) /
                max(float(row[f"{x}|total_cost"]) for x in models) for m in models}
        inst = next((i for i in built.instances if i.id == f"routerbench-{qid}-{pref}"), None)
        if max(util.values()) == min(util.values()):
            assert inst is None  # all tie: skipped, and counted
            continue
        assert inst.preference == pref and inst.split == "test" and len(inst.candidates) == 11
        lo = min(util.values())
        assert inst.relevance == pytest.approx({m: u - lo for m, u in util.items() if u - lo > 1e-9}, abs=1e-6)
    assert {i.split for i in built.instances} <= {"train", "validation", "test"}


def test_the_same_inputs_give_byte_identical_outputs(tmp_path):
    for source, path in [("recbole", "recbole"), ("routerbench", "routerbench"), ("trec-dl", "trec-dl")]:
        assert render(build(source, SAMPLES / path)) == render(build(source, SAMPLES / path))
    assert render(build("recbole", SAMPLES / "recbole", {"seed": "1"})) != render(build("recbole", SAMPLES / "recbole"))


def test_ingest_writes_tables_instances_manifest_and_report(tmp_path):
    result = ingest("recbole", SAMPLES / "recbole", tmp_path / "d", dvc=False)
    out = tmp_path / "d"
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        "instances.jsonl", "manifest.json", "provenance.json", "tables/interactions.parquet", "tables/items.parquet",
        "validation.md"]
    m = json.loads((out / "manifest.json").read_text())
    assert m["source"] == "recbole" and m["params"]["history"] == 20 and m["counts"]["instances"] == 16
    import hashlib

    assert {i["file"]: i["md5"] for i in m["inputs"]} == {
        f: hashlib.md5((SAMPLES / "recbole" / f).read_bytes()).hexdigest() for f in ("movies.inter", "movies.item")}
    assert m["outputs"]["instances.jsonl"] == hashlib.md5((out / "instances.jsonl").read_bytes()).hexdigest()
    assert "PASSED" in (out / "validation.md").read_text() and result.report.success


def test_splits_are_by_user_and_disjoint():
    inst = build("recbole", SAMPLES / "recbole", {"split": "train:0.5,test:0.5"}).instances
    assert {i.split for i in inst} == {"train", "test"}
    assert len({i.user_id for i in inst}) == len(inst)


# ------------------------------------------------------------------------------------------------------ bad input

def _copy(tmp_path, name):
    dst = tmp_path / name
    shutil.copytree(SAMPLES / name, dst)
    return dst


def _truncate(p):
    """Cut the file in the middle of a record, as an interrupted copy does."""
    text = p.read_text()
    p.write_text(text[: text.index("\t" if p.suffix != ".json" else ",", len(text) // 2) + 1])


def _append(p, text):
    with open(p, "a") as f:
        f.write(text)


def _drop_column(p, col):
    lines = p.read_text().splitlines()
    idx = [h.split(":")[0] for h in lines[0].split("\t")].index(col)
    p.write_text("\n".join("\t".join(x for k, x in enumerate(l.split("\t")) if k != idx) for l in lines) + "\n")


BAD = {
    "truncated .inter": ("recbole", "recbole", lambda d: _truncate(d / "movies.inter"), r"movies\.inter:\d+: expected 4"),
    "truncated JSON": ("trec-dl", "trec-dl", lambda d: _truncate(d / "sample_bm25_top8.json"),
                       r"sample_bm25_top8\.json:\d+: not valid JSON"),
    "missing column": ("recbole", "recbole", lambda d: _drop_column(d / "movies.inter", "timestamp"),
                       r"movies\.inter:1: missing column\(s\) timestamp"),
    "unknown query in qrels": ("trec-dl", "trec-dl",
                               lambda d: (d / "qrels.sample.txt").write_text("9999 0 7000 2\n"),
                               r"qrels\.sample\.txt:1: unknown query id '9999'"),
    "unknown user in candidate lists": ("llmrank", "llmrank",
                                        lambda d: _append(d / "Games-sample.random", "777\t1 2 3\n"),
                                        r"Games-sample\.random:13: unknown user '777'"),
    "duplicate item ids": ("recbole", "recbole",
                           lambda d: _append(d / "movies.item", "1\tAgain\t1999\tDrama\n"),
                           r"movies\.item:82: duplicate item_id '1' \(first on line 2\)"),
    "duplicate query ids": ("routerbench", "routerbench",
                            lambda d: _append(d / "sample_test.csv",
                                                      (d / "sample_test.csv").read_text().splitlines()[1] + "\n"),
                            r"sample_test\.csv:\d+: duplicate query id"),
    "CSV with the wrong separator": ("routerbench", "routerbench",
                                     lambda d: (d / "sample_test.csv").write_text(
                                         (d / "sample_test.csv").read_text().replace(",", ";")),
                                     r"sample_test\.csv:1: missing column.*wrong separator"),
    "tab file with commas": ("recbole", "recbole", lambda d: (d / "movies.inter").write_text(
                                 (d / "movies.inter").read_text().replace("\t", ",")),
                             r"movies\.inter:1: expected a tab-separated header.*comma-separated"),
    "empty file": ("recbole", "recbole", lambda d: (d / "movies.item").write_text(""),
                   r"movies\.item: empty file"),
    "quality out of range": ("routerbench", "routerbench", lambda d: (d / "sample_train.csv").write_text(
                                 (d / "sample_train.csv").read_text().replace(",1,", ",7,", 1)),
                             r"sample_train\.csv:2: column .*: quality must be within \[0, 1\]"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_names_file_and_line_and_replaces_nothing(tmp_path, case):
    source, folder, corrupt, pattern = BAD[case]
    out = tmp_path / "data" / "d"
    ingest(source, SAMPLES / folder, out, dvc=False)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    bad = _copy(tmp_path, folder)
    corrupt(bad)
    with pytest.raises(DataError, match=pattern):
        ingest(source, bad, out, dvc=False)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert [p.name for p in (tmp_path / "data").iterdir()] == ["d"]  # no leftovers


def test_unknown_param_and_bad_values_are_named():
    with pytest.raises(DataError, match="--param depht: unknown parameter.*known: depth"):
        build("trec-dl", SAMPLES / "trec-dl", {"depht": "10"})
    with pytest.raises(DataError, match="--param seed=x: expected a int"):
        build("recbole", SAMPLES / "recbole", {"seed": "x"})
    with pytest.raises(DataError, match="fractions must be >= 0 and sum to 1"):
        build("recbole", SAMPLES / "recbole", {"split": "train:0.5,test:0.2"})
    with pytest.raises(DataError, match="unknown source 'movielens'"):
        build("movielens", SAMPLES / "recbole")


def test_ingest_cli_prints_json_and_names_bad_input(tmp_path):
    import subprocess
    import sys

    def run(*args):
        return subprocess.run([sys.executable, "-m", "iranker.cli", "data", "ingest", *args], capture_output=True,
                              text=True, timeout=300, check=False)

    ok = run("trec-dl", str(SAMPLES / "trec-dl"), "--out", str(tmp_path / "p"), "--param", "depth=5", "--no-dvc")
    assert ok.returncode == 0, ok.stderr
    out = json.loads(ok.stdout)
    assert out["counts"]["instances"] == 3 and out["params"]["depth"] == 5 and out["scenario"] == "passage"
    bad = run("trec-dl", str(SAMPLES / "trec-dl"), "--out", str(tmp_path / "q"), "--param", "depth")
    assert bad.returncode == 2 and "--param depth: expected KEY=VALUE" in bad.stderr
    missing = run("recbole", str(tmp_path / "nowhere"), "--out", str(tmp_path / "q"))
    assert missing.returncode == 1 and "nowhere: no such file or folder" in missing.stderr
    assert not (tmp_path / "q").exists()


def test_instances_source_of_one_scenario_is_validated_without_tables(tmp_path):
    from iranker.validation import ValidationFailed

    rows = [json.loads(line) for line in (ROOT / "samples" / "instances.jsonl").read_text().splitlines()]
    routing = [r for r in rows if r["scenario"] == "routing"]
    good = tmp_path / "routing.jsonl"
    good.write_text("".join(json.dumps(r) + "\n" for r in routing))
    result = ingest("instances", good, tmp_path / "out", dvc=False)
    assert result.report.success and result.manifest["scenario"] == "routing"
    routing[1]["id"] = routing[0]["id"]
    good.write_text("".join(json.dumps(r) + "\n" for r in routing))
    with pytest.raises(ValidationFailed, match="expect_column_values_to_be_unique on id"):
        ingest("instances", good, tmp_path / "out", dvc=False)
