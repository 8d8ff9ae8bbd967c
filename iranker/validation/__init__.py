"""Great Expectations suites for the canonical tables and the instances, and a readable report.

Each table of each scenario has a suite (ids unique and non-null, references to known ids, value ranges, text
lengths); instances are flattened to one row per instance (counts of candidates, unique ids, unknown relevance ids,
relevant candidates, text lengths, the number of splits its user or query appears in, any schema error) and checked
by one suite. `validate_dir` runs them all on a dataset folder; `iranker data validate DIR` prints and writes the
report and exits non-zero when anything fails.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import pandas as pd

from iranker.schema import MAX_CANDIDATES, MAX_QUERY_CHARS, MAX_TEXT_CHARS, PREFERENCES, SCENARIOS

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")


@dataclasses.dataclass
class Check:
    suite: str
    expectation: str
    target: str
    success: bool
    unexpected: int | None = None
    examples: list[Any] = dataclasses.field(default_factory=list)
    observed: Any = None


@dataclasses.dataclass
class Report:
    checks: list[Check]

    @property
    def success(self) -> bool:
        return all(c.success for c in self.checks)

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.success]

    def to_markdown(self) -> str:
        n_fail = len(self.failures)
        lines = ["# Data validation report (Great Expectations)", "",
                 (f"**{'PASSED' if self.success else 'FAILED'}**: {len(self.checks) - n_fail} of {len(self.checks)} "
                 "expectations met."), "", "| suite | expectation | column(s) | result | details |",
                 "|---|---|---|---|---|"]
        for c in self.checks:
            detail = ""
            if not c.success:
                parts = []
                if c.unexpected is not None:
                    parts.append(f"{c.unexpected} unexpected")
                if c.examples:
                    parts.append("e.g. " + ", ".join(_short(e) for e in c.examples[:5]))
                if c.observed is not None:
                    parts.append(f"observed {_short(c.observed)}")
                detail = "; ".join(parts)
            lines.append(f"| {c.suite} | {c.expectation} | {c.target} | {'ok' if c.success else 'FAILED'} | "
                         f"{detail} |")
        return "\n".join(lines) + "\n"

    def summary(self) -> dict[str, Any]:
        return {"success": self.success, "expectations": len(self.checks),
                "failed": [dataclasses.asdict(c) for c in self.failures]}


def _short(v: Any) -> str:
    s = json.dumps(v, default=str)
    return (s[:80] + "...") if len(s) > 80 else s


class ValidationFailed(ValueError):
    """New data failed its suites; the message lists each failed expectation."""

    def __init__(self, report: Report):
        self.report = report
        lines = [f"{c.suite}: {c.expectation} on {c.target}"
                 + (f" ({c.unexpected} unexpected, e.g. {_short(c.examples[:3])})" if c.unexpected else "")
                 for c in report.failures]
        super().__init__("data validation failed; nothing was replaced:\n  " + "\n  ".join(lines))


# ------------------------------------------------------------------------------------------------------ suites

def _gxe():
    import great_expectations.expectations as gxe

    return gxe


def _known(tables: dict[str, pd.DataFrame], table: str, column: str, values: pd.Series) -> Any:
    """References to known ids. GX's in-set check copies a large value set for every metric it computes, so the
    table gets a column `unknown_<column>` (the value where it is not among `values`, else null) that must be null:
    the report then shows the unknown ids themselves."""
    df = tables[table] = tables[table].copy()
    df[f"unknown_{column}"] = df[column].where(~df[column].isin(set(values)))
    return _gxe().ExpectColumnValuesToBeNull(column=f"unknown_{column}")


def table_suites(scenario: str, tables: dict[str, pd.DataFrame]) -> dict[str, list]:
    """{table name: expectations} for the canonical tables of a scenario; `tables` gains the helper columns."""
    x = _gxe()
    if scenario == "recommendation":
        items = tables["items"]["item_id"]
        suites = {
            "items": [x.ExpectColumnValuesToNotBeNull(column="item_id"), x.ExpectColumnValuesToBeUnique(column="item_id"),
                      x.ExpectColumnValueLengthsToBeBetween(column="title", min_value=1, max_value=MAX_TEXT_CHARS)],
            "interactions": [x.ExpectColumnValuesToNotBeNull(column="user_id"),
                             x.ExpectColumnValuesToNotBeNull(column="item_id"),
                             _known(tables, "interactions", "item_id", items),
                             x.ExpectCompoundColumnsToBeUnique(column_list=["user_id", "position"]),
                             x.ExpectColumnValuesToBeBetween(column="rating", min_value=0)],
        }
        if "candidate_pool" in tables:
            suites["candidate_pool"] = [_known(tables, "candidate_pool", "item_id", items),
                                        _known(tables, "candidate_pool", "user_id", tables["interactions"]["user_id"])]
        return suites
    if scenario == "passage":
        qids = tables["queries"]["qid"]
        return {
            "queries": [x.ExpectColumnValuesToBeUnique(column="qid"),
                        x.ExpectColumnValueLengthsToBeBetween(column="query", min_value=1, max_value=MAX_QUERY_CHARS)],
            "first_stage": [x.ExpectCompoundColumnsToBeUnique(column_list=["qid", "docid"]),
                            _known(tables, "first_stage", "qid", qids),
                            x.ExpectColumnValuesToBeBetween(column="rank", min_value=1),
                            x.ExpectColumnValueLengthsToBeBetween(column="text", min_value=1,
                                                                  max_value=MAX_TEXT_CHARS)],
            "qrels": [x.ExpectCompoundColumnsToBeUnique(column_list=["qid", "docid"]),
                      _known(tables, "qrels", "qid", qids),
                      x.ExpectColumnValuesToBeBetween(column="grade", min_value=0)],
        }
    if scenario == "routing":
        return {
            "queries": [x.ExpectColumnValuesToBeUnique(column="query_id"),
                        x.ExpectColumnValueLengthsToBeBetween(column="prompt", min_value=1),
                        x.ExpectColumnValuesToBeInSet(column="source_split", value_set=["train", "test", ""])],
            "outcomes": [x.ExpectCompoundColumnsToBeUnique(column_list=["query_id", "model"]),
                         _known(tables, "outcomes", "query_id", tables["queries"]["query_id"]),
                         x.ExpectColumnValuesToBeBetween(column="quality", min_value=0, max_value=1),
                         x.ExpectColumnValuesToBeBetween(column="cost", min_value=0)],
        }
    if scenario == "feedback":  # served calls and their outcomes (iranker.data.feedback)
        calls, shown, outcomes = tables["calls"], tables["shown"], tables["outcomes"]
        key = lambda df: df["request_id"].astype(str) + "|" + df["instance"].astype(str)
        shown_keys = key(shown) + "|" + shown["candidate_id"].astype(str)
        outcomes = tables["outcomes"] = outcomes.assign(
            unknown_candidate=(key(outcomes) + "|" + outcomes["candidate_id"].astype(str)).where(
                lambda s: ~s.isin(set(shown_keys))),
            before_call=outcomes["time"].where(_utc(outcomes["time"]) < _utc(
                key(outcomes).map(dict(zip(key(calls), calls["time"], strict=True))))))
        return {
            "calls": [x.ExpectCompoundColumnsToBeUnique(column_list=["request_id", "instance"]),
                      x.ExpectColumnValuesToBeUnique(column="event_id", row_condition=_first_instance()),
                      x.ExpectColumnValuesToBeInSet(column="scenario", value_set=list(SCENARIOS))],
            "shown": [x.ExpectCompoundColumnsToBeUnique(column_list=["request_id", "instance", "candidate_id"]),
                      _known(tables, "shown", "request_id", calls["request_id"])],
            "outcomes": [x.ExpectCompoundColumnsToBeUnique(column_list=["event_id", "request_id", "instance",
                                                                        "candidate_id", "source"]),
                         x.ExpectColumnValuesToBeNull(column="unknown_candidate"),
                         x.ExpectColumnValuesToBeNull(column="before_call"),
                         x.ExpectColumnValuesToBeBetween(column="grade", min_value=0)],
        }
    return {}


def _utc(times: pd.Series) -> pd.Series:
    return pd.to_datetime(times, utc=True, errors="coerce", format="ISO8601")


def _first_instance():
    from great_expectations.expectations.row_conditions import Column

    return Column("instance") == 0


def instance_suite() -> list:
    from great_expectations.expectations.row_conditions import Column

    x = _gxe()
    rec = Column("scenario") == "recommendation"
    routing = Column("scenario") == "routing"
    return [
        x.ExpectColumnValuesToBeNull(column="schema_error"),
        x.ExpectColumnValuesToNotBeNull(column="id"),
        x.ExpectColumnValuesToBeUnique(column="id"),
        x.ExpectColumnValuesToBeInSet(column="scenario", value_set=list(SCENARIOS)),
        x.ExpectColumnValuesToBeInSet(column="split", value_set=["train", "validation", "test"]),
        x.ExpectColumnValuesToBeBetween(column="n_candidates", min_value=1, max_value=MAX_CANDIDATES),
        x.ExpectColumnPairValuesToBeEqual(column_A="n_candidates", column_B="n_unique_candidate_ids"),
        x.ExpectColumnValuesToBeBetween(column="n_unknown_relevance_ids", min_value=0, max_value=0),
        x.ExpectColumnValuesToBeBetween(column="n_negative_grades", min_value=0, max_value=0),
        x.ExpectColumnValuesToBeBetween(column="n_relevant", min_value=1, max_value=1, row_condition=rec),
        x.ExpectColumnValuesToBeBetween(column="n_relevant", min_value=1, row_condition=routing),
        x.ExpectColumnValuesToBeInSet(column="preference", value_set=list(PREFERENCES), row_condition=routing),
        x.ExpectColumnValuesToBeBetween(column="min_text_chars", min_value=1),
        x.ExpectColumnValuesToBeBetween(column="max_text_chars", max_value=MAX_TEXT_CHARS),
        x.ExpectColumnValuesToBeBetween(column="query_chars", max_value=MAX_QUERY_CHARS),
        x.ExpectColumnValuesToBeBetween(column="group_splits", min_value=1, max_value=1),
    ]


def instance_frame(rows: list[dict]) -> pd.DataFrame:
    """One row per instance (raw JSON objects, possibly broken) with the quantities the suite checks."""
    from pydantic import ValidationError

    from iranker.schema import RankingInstance, describe_error

    recs = []
    for r in rows:
        cands = r.get("candidates") or []
        ids = [c.get("id") for c in cands if isinstance(c, dict)]
        texts = [str(c.get("text", "")) for c in cands if isinstance(c, dict)]
        rel = r.get("relevance") or {}
        try:
            RankingInstance.model_validate(r)
            err = None
        except ValidationError as e:
            err = describe_error(e)[:300]
        scenario = r.get("scenario")
        group = r.get("user_id") if scenario == "recommendation" else r.get("query")
        recs.append({
            "id": r.get("id"), "scenario": scenario, "split": r.get("split", "test"),
            "preference": r.get("preference"),
            "group": f"{r.get('dataset')}|{scenario}|{group}",
            "n_candidates": len(cands), "n_unique_candidate_ids": len(set(ids)),
            "n_unknown_relevance_ids": sum(1 for k in rel if k not in set(ids)),
            "n_negative_grades": sum(1 for v in rel.values() if not isinstance(v, int | float) or v < 0),
            "n_relevant": sum(1 for v in rel.values() if isinstance(v, int | float) and v > 0),
            "min_text_chars": min((len(t) for t in texts), default=0),
            "max_text_chars": max((len(t) for t in texts), default=0),
            "query_chars": len(r.get("query") or ""), "schema_error": err,
        })
    df = pd.DataFrame(recs)
    if len(df):
        df["group_splits"] = df.groupby("group")["split"].transform("nunique")
    return df


# ------------------------------------------------------------------------------------------------------ running

def _run(suites: dict[str, tuple[pd.DataFrame, list]]) -> Report:
    import great_expectations as gx

    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = {"globally": False}
    source = ctx.data_sources.add_pandas("iranker")
    checks = []
    for name, (df, expectations) in suites.items():
        batch_def = source.add_dataframe_asset(name).add_batch_definition_whole_dataframe("all")
        suite = ctx.suites.add(gx.ExpectationSuite(name=name, expectations=expectations))
        result = batch_def.get_batch(batch_parameters={"dataframe": df}).validate(suite)
        for r in result.results:
            cfg = r.expectation_config
            kw = cfg.kwargs
            if kw.get("column"):
                target = kw["column"]
            elif kw.get("column_list"):
                target = ",".join(kw["column_list"])
            elif kw.get("column_A"):
                target = f"{kw['column_A']}={kw['column_B']}"
            else:
                target = "table"
            cond = kw.get("row_condition")
            if isinstance(cond, dict) and "operator" in cond:
                cond = f"{cond['column']['name']} {cond['operator']} {cond['parameter']!r}"
            elif isinstance(cond, dict):
                cond = cond.get("pass_through_filter") or ""
            cond = f" where {cond}" if cond else ""
            res = r.result or {}
            examples = res.get("partial_unexpected_list") or []
            checks.append(Check(suite=name, expectation=cfg.type + cond, target=target, success=bool(r.success),
                                unexpected=res.get("unexpected_count"),
                                examples=json.loads(json.dumps(examples[:5], default=str)),
                                observed=None if r.success else res.get("observed_value")))
    return Report(checks)


def validate(scenario: str | list, tables: dict[str, pd.DataFrame], instance_rows: list[dict],
             source: str | None = None) -> Report:
    """The table suites of `scenario` (of the feedback tables when `source` is 'feedback': their instances may
    be of every scenario) and the instance suite."""
    suites: dict[str, tuple[pd.DataFrame, list]] = {}
    kind = "feedback" if source == "feedback" else scenario
    if isinstance(kind, str) and tables:  # instances passed through (source `instances`) have no tables
        tables = dict(tables)
        for name, exps in table_suites(kind, tables).items():
            suites[f"{kind}.{name}"] = (tables[name], exps)
    suites["instances"] = (instance_frame(instance_rows), instance_suite())
    return _run(suites)


def validate_built(built) -> Report:
    scenarios = sorted({i.scenario for i in built.instances})
    scenario = scenarios[0] if len(scenarios) == 1 else scenarios
    return validate(scenario, built.tables, [i.model_dump() for i in built.instances], built.source)


def validate_dir(folder: str | Path) -> Report:
    """Validate a dataset folder (tables/*.parquet + instances.jsonl) written by `iranker data ingest`."""
    from iranker.data import DataError, load_tables, read_manifest

    folder = Path(folder)
    manifest = read_manifest(folder)
    path = folder / "instances.jsonl"
    if not path.exists():
        raise DataError(f"{path}: no such file")
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{n}: not valid JSON (column {e.colno}: {e.msg})") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}:{n}: expected a JSON object (a ranking instance)")
        rows.append(row)
    if not rows:
        raise DataError(f"{path}: no instances (empty file)")
    tables = load_tables(folder)
    scenario = manifest.get("scenario")
    expected = {"recommendation": ["items", "interactions"], "passage": ["queries", "first_stage", "qrels"],
                "routing": ["queries", "outcomes"]}.get(scenario if isinstance(scenario, str) else "", [])
    if manifest.get("source") == "feedback":
        expected = ["calls", "shown", "outcomes"]
    missing = [t for t in expected if t not in tables]
    if missing and manifest.get("source") != "instances":
        raise DataError(f"{folder / 'tables'}: missing table(s) {', '.join(missing)} for {scenario}")
    return validate(scenario if manifest.get("source") != "instances" else [], tables, rows, manifest.get("source"))
