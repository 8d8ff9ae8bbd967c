"""Recommendation data: RecBole atomic files and LLMRank history files -> canonical tables -> ranking instances.

Canonical tables (the same for both formats):
- `interactions`: user_id, item_id, rating (null when the format has none), timestamp (null likewise), position
  (0-based, chronological within the user);
- `items`: item_id, title, year (may be empty), classes ('|'-joined, may be empty);
- `candidate_pool` (LLMRank only): user_id, item_id, rank — the published random candidate list per user.

Protocol (DESIGN.md §1): history = the first `history` interactions of a user, target = the next one (RecBole), or
history = the last `history` items before the given target (LLMRank, whose files hold history -> next item);
`negatives` items the user never interacted with, drawn at random (`negative_sampling=random`, from the published
list when there is one) or in proportion to item popularity (`popularity`, so that negatives are as popular as
targets and a popularity count cannot single the target out); candidates shuffled with the seed; split by user.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path

import pandas as pd

from iranker.data.base import DataError, assign_split, parse_split, read_delimited, to_float
from iranker.io import seeded_rng
from iranker.schema import RankingInstance


@dataclasses.dataclass
class RecParams:
    history: int = 20
    negatives: int = 19
    negative_sampling: str = "random"
    split: str = "train:0.8,validation:0.1,test:0.1"
    seed: int = 0
    with_classes: bool = False
    max_users: int = 0
    dataset: str = ""

    def check(self) -> None:
        if self.negative_sampling not in ("random", "popularity"):
            raise DataError(f"--param negative_sampling={self.negative_sampling}: expected random or popularity")
        if self.history < 1 or self.negatives < 1:
            raise DataError("--param history / negatives: must be at least 1")
        parse_split(self.split)


@dataclasses.dataclass
class LLMRankParams(RecParams):
    inter: str = "test"


def _user_order(u: str) -> tuple[int, int | str]:
    return (0, int(u)) if u.isdigit() else (1, u)


def _read_items(path: Path, extra: tuple[str, ...] = ()) -> pd.DataFrame:
    """NAME.item: item_id and a title column (`movie_title` in MovieLens, `title` elsewhere)."""
    if not path.exists():
        raise DataError(f"{path}: no such file")
    raw = path.read_bytes()
    try:
        raw.decode("utf-8")
        enc = "utf-8"
    except UnicodeDecodeError:
        enc = "latin-1"  # MovieLens titles are Latin-1
    header = [h.split(":")[0] for h in raw.split(b"\n", 1)[0].decode(enc).rstrip("\r").split("\t")]
    title_col = "movie_title" if "movie_title" in header else "title"
    rows, first_line = [], {}
    for n, r in read_delimited(path, ["item_id", title_col], encoding=enc, optional=extra):
        iid = r["item_id"].strip()
        if not iid:
            raise DataError(f"{path}:{n}: column item_id: empty id")
        if iid in first_line:
            raise DataError(f"{path}:{n}: duplicate item_id {iid!r} (first on line {first_line[iid]})")
        first_line[iid] = n
        rows.append({"item_id": iid, "title": r[title_col].strip(), "year": r.get("release_year", "").strip(),
                     "classes": "|".join(r.get("class", "").split())})
    if not rows:
        raise DataError(f"{path}: no items (only a header)")
    return pd.DataFrame(rows, columns=["item_id", "title", "year", "classes"])


def read_recbole(path: Path, params: RecParams) -> tuple[dict[str, pd.DataFrame], list[Path]]:
    """A RecBole atomic dataset: a folder with NAME.inter and NAME.item (or the .inter file itself)."""
    inter = _find(path, ".inter")
    item = inter.with_suffix(".item")
    if not item.exists():
        raise DataError(f"{item}: no such file; a RecBole dataset needs NAME.item beside {inter.name}")
    items = _read_items(item, extra=("release_year", "class"))
    known = set(items["item_id"])
    rows = []
    for n, r in read_delimited(inter, ["user_id", "item_id", "timestamp"], optional=("rating",)):
        if r["item_id"] not in known:
            raise DataError(f"{inter}:{n}: column item_id: {r['item_id']!r} is not in {item.name}")
        rows.append((r["user_id"], r["item_id"],
                     to_float(inter, n, "rating", r.get("rating", ""), allow_empty=True),
                     to_float(inter, n, "timestamp", r["timestamp"]), n))
    if not rows:
        raise DataError(f"{inter}: no interactions (only a header)")
    df = pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "timestamp", "line"])
    # chronological per user; equal timestamps keep file order
    df = df.sort_values(["user_id", "timestamp", "line"], kind="stable")
    df["position"] = df.groupby("user_id").cumcount()
    df = df.drop(columns="line").reset_index(drop=True)
    return {"interactions": df, "items": items}, [inter, item]


def read_llmrank(path: Path, params: LLMRankParams) -> tuple[dict[str, pd.DataFrame], list[Path]]:
    """LLMRank files: NAME.item, NAME.{test,valid}.inter (user, history list, next item) and NAME.random."""
    if params.inter not in ("test", "valid"):
        raise DataError(f"--param inter={params.inter}: expected test or valid")
    inter = _find(path, f".{params.inter}.inter")
    base = inter.name[: -len(f".{params.inter}.inter")]
    item = inter.parent / f"{base}.item"
    pool = inter.parent / f"{base}.random"
    for p in (item, pool):
        if not p.exists():
            raise DataError(f"{p}: no such file; an LLMRank dataset needs {base}.item and {base}.random")
    items = _read_items(item)
    known = set(items["item_id"])
    rows, seen = [], {}
    for n, r in read_delimited(inter, ["user_id", "item_id_list", "item_id"]):
        u = r["user_id"]
        if u in seen:
            raise DataError(f"{inter}:{n}: duplicate user_id {u!r} (first on line {seen[u]})")
        seen[u] = n
        seq = r["item_id_list"].split() + [r["item_id"].strip()]
        for i in seq:
            if i not in known:
                raise DataError(f"{inter}:{n}: item {i!r} is not in {item.name}")
        rows += [(u, i, None, None, k) for k, i in enumerate(seq)]
    if not rows:
        raise DataError(f"{inter}: no users (only a header)")
    interactions = pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "timestamp", "position"])
    interactions = interactions.astype({"rating": "float64", "timestamp": "float64"})
    pool_rows = []
    with pool.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            u = parts[0]
            if u not in seen:
                raise DataError(f"{pool}:{n}: unknown user {u!r}: not in {inter.name}")
            if len(parts) < 2:
                raise DataError(f"{pool}:{n}: expected 'user_id item_id item_id ...', got only the user")
            for k, i in enumerate(parts[1:], 1):
                if i not in known:
                    raise DataError(f"{pool}:{n}: item {i!r} is not in {item.name}")
                pool_rows.append((u, i, k))
    if not pool_rows:
        raise DataError(f"{pool}: empty file (expected 'user_id item_id item_id ...' lines)")
    tables = {"interactions": interactions, "items": items,
              "candidate_pool": pd.DataFrame(pool_rows, columns=["user_id", "item_id", "rank"])}
    return tables, [inter, item, pool]


def _find(path: Path, suffix: str) -> Path:
    if path.is_file():
        if not path.name.endswith(suffix):
            raise DataError(f"{path}: expected a *{suffix} file or a folder holding one")
        return path
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    found = sorted(path.glob(f"*{suffix}"))
    if len(found) != 1:
        raise DataError(f"{path}: expected exactly one *{suffix} file, found "
                        f"{len(found) or 'none'}{': ' + ', '.join(p.name for p in found) if found else ''}")
    return found[0]


def item_text(row: dict, with_classes: bool) -> str:
    text = f"{row['title']} ({row['year']})" if row.get("year") else row["title"]
    if with_classes and row.get("classes"):
        text += " - " + ", ".join(row["classes"].split("|"))
    return text


def build_instances(tables: dict[str, pd.DataFrame], params: RecParams, dataset: str,
                    target: str) -> tuple[list[RankingInstance], dict]:
    """target='first': history = first `history` interactions, target = the next (RecBole protocol);
    target='last': the last item is the target, history = the `history` items before it (LLMRank files)."""
    fractions = parse_split(params.split)
    items = {r["item_id"]: r for r in tables["items"].to_dict("records")}
    texts = {i: item_text(r, params.with_classes) for i, r in items.items()}
    inter = tables["interactions"]
    seqs: dict[str, list[str]] = inter.sort_values(["user_id", "position"], kind="stable").groupby(
        "user_id", sort=False)["item_id"].agg(list).to_dict()
    popularity = Counter(inter["item_id"])
    catalog = sorted(popularity, key=_user_order)  # items anyone interacted with, in a fixed order
    pools: dict[str, list[str]] = {}
    if "candidate_pool" in tables:
        cp = tables["candidate_pool"].sort_values(["user_id", "rank"], kind="stable")
        pools = cp.groupby("user_id", sort=False)["item_id"].agg(list).to_dict()
    skipped: Counter = Counter()
    out = []
    users = sorted(seqs, key=_user_order)
    if target == "last" and pools:
        users = [u for u in users if u in pools]  # only users with a published candidate list
    for u in users:
        seq = seqs[u]
        if target == "first":
            if len(seq) <= params.history:
                skipped[f"fewer than {params.history + 1} interactions"] += 1
                continue
            hist, tgt = seq[: params.history], seq[params.history]
        else:
            hist, tgt = seq[:-1][-params.history:], seq[-1]
            if not hist:
                skipped["no history"] += 1
                continue
        exclude = set(seq)
        rng = seeded_rng(params.seed, "user", u)
        negs = _negatives(rng, params, exclude, pools.get(u), catalog, popularity)
        if len(negs) < params.negatives:
            skipped[f"fewer than {params.negatives} eligible negatives"] += 1
            continue
        cands = [tgt] + negs
        rng.shuffle(cands)
        out.append(RankingInstance(
            id=f"{dataset}-u{u}", scenario="recommendation", dataset=dataset, user_id=u,
            history=[texts[i] for i in hist], candidates=[{"id": i, "text": texts[i]} for i in cands],
            relevance={tgt: 1.0}, split=assign_split(f"user:{u}", params.seed, fractions)))
        if params.max_users and len(out) >= params.max_users:
            break
    return out, {"skipped": dict(sorted(skipped.items()))}


def _negatives(rng, params: RecParams, exclude: set[str], pool: list[str] | None, catalog: list[str],
               popularity: Counter) -> list[str]:
    if params.negative_sampling == "random" and pool is not None:
        seen: set[str] = set()
        eligible = [i for i in pool if i not in exclude and not (i in seen or seen.add(i))]
        return eligible[: params.negatives]
    eligible = [i for i in catalog if i not in exclude]
    if len(eligible) <= params.negatives:
        return eligible
    if params.negative_sampling == "random":
        return rng.sample(eligible, params.negatives)
    weights = [popularity[i] for i in eligible]
    chosen: list[str] = []
    taken: set[str] = set()
    while len(chosen) < params.negatives:
        for i in rng.choices(eligible, weights=weights, k=params.negatives * 2):
            if i not in taken and len(chosen) < params.negatives:
                taken.add(i)
                chosen.append(i)
    return chosen
