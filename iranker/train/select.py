"""Choosing a run's checkpoint on validation data - never the test split."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

from iranker.train.config import TrainConfig
from iranker.train.loop import Trainer
from iranker.train.modeling import load_model
from iranker.train.pools import load_training_instances

logger = logging.getLogger(__name__)  # `log` is the callers' progress callback here
HOLD_BYTES = 6 << 30  # select_served keeps its merged models (float32) in memory up to this much


def select_checkpoint(run: str | Path, states: list[Path], pools: int = 64, out: str | Path | None = None,
                      log: Callable[[str], None] | None = None) -> dict:
    """Score a run's checkpoints (and the base model) by the exact expected exclusion reward on fixed pools of the
    VALIDATION split, in the layout the run trained in, and write the best checkpoint as a transformers folder
    (`out/final`, default `run/selected/final`). Returns {"scores": {name: probe}, "best", "model", "pools"}."""
    run = Path(run)
    say = log or logger.info
    cfg = TrainConfig.model_validate(json.loads((run / "config.json").read_text()))
    cfg = cfg.model_copy(update={"probe": cfg.probe.model_copy(update={"pools": pools})})
    if not states:
        raise ValueError(f"{run}: no checkpoints to choose from")
    probe = load_training_instances(cfg, split="validation")
    if not probe:
        raise ValueError(f"data: no validation-split instances in {', '.join(cfg.data)} to select a checkpoint on")
    model, tokenizer = load_model(cfg)
    trainer = Trainer(cfg, load_training_instances(cfg), model, tokenizer, Path(out or run / "selected"),
                      progress=False, probe_instances=probe)
    scores: dict[str, dict] = {"random": trainer.probe_random()}
    if cfg.lora.r:
        with trainer.model.disable_adapter():
            scores["base"] = trainer.probe()
    named = {}
    for path in states:
        step = trainer.load_state(Path(path), optimizer=False)
        named[f"step-{step}"] = Path(path)
        scores[f"step-{step}"] = trainer.probe()
        say(f"checkpoint step {step}: validation expected exclusion reward {scores[f'step-{step}']['all']:.4f}")
    best = max(named, key=lambda k: scores[k]["all"])
    trainer.load_state(named[best], optimizer=False)
    trainer.out.mkdir(parents=True, exist_ok=True)
    final = trainer.save_final()
    n_pools = len(trainer.algo.probe_steps)
    (trainer.out / "selection.json").write_text(json.dumps({"best": best, "pools": n_pools, "scores": scores},
                                                           indent=1))
    return {"scores": scores, "best": best, "model": str(final), "pools": n_pools}


def select_served(run: str | Path, states: list[Path], instances: int = 300, out: str | Path | None = None,
                  log: Callable[[str], None] | None = None, batch_size: int = 16, share_frozen: bool = True) -> dict:
    """Score a run's checkpoints (and the base model) as they would serve: whole VALIDATION lists up to the
    window (20 passages, 20 items, 11 models), at least `instances` of them over the datasets and both listing
    orders, as evenly as they allow (a dataset with fewer validation instances gives what it has and leaves the
    rest of its share to the others; all of them where there are fewer in all; a longer list, such as a top-100
    passage run, keeps its first stage's top `window` candidates in its listing order, since serving ranks a longer
    one window by window and every window after the first depends on the model), ranked by the serving ranker
    under the run's ranking settings and scored with the test metrics (each scenario's primary metric: MRR,
    nDCG@10, nDCG@3). `states` are checkpoint state.pt files or adapter folders exported from them (the weights
    that ship, bfloat16: what `bench_train_quality.py --candidates` chooses among). Writes the best checkpoint as
    `out/final` (default `run/selected/final`) and
    `selection.json`: every checkpoint's mean with its standard error, and which others lie within one standard
    error of the chosen one (a choice the validation data cannot make).

    The base is the run's base model in float32, as `merged` builds the checkpoints. When the adapter leaves the
    lower layers frozen (`lora.top_layers`, `lora.reuse_frozen`; the cached layout), the models rank the
    lists `batch_size` at a time, all models on the same lists, and each list's prompt runs through the frozen
    layers once for all of them (`SharedPrefixes`): the same rankings, the frozen part of the prefill paid once
    instead of once per model (`share_frozen=False`: each model prefills on its own, as before).
    `selection.json` records the seconds spent ranking."""
    import math
    from dataclasses import replace

    from iranker.backends.transformers import SharedPrefixes, TransformersBackend, splittable
    from iranker.evaluate import _min_grade
    from iranker.evaluate.harness import KS, PRIMARY, load_eval_data
    from iranker.listing import first_stage_order
    from iranker.metrics import instance_metrics, random_instance_metrics
    from iranker.ranker import RankerConfig, rank_requests

    run = Path(run)
    say = log or logger.info
    cfg = TrainConfig.model_validate(json.loads((run / "config.json").read_text()))
    if not states:
        raise ValueError(f"{run}: no checkpoints to choose from")
    orders = ("first-stage", "shuffled")
    # at least `instances` lists in all, each dataset's share as even as its validation split allows
    data = load_eval_data(cfg.data, split="validation", total=math.ceil(instances / len(orders)), orders=orders)
    window = cfg.ranking.window
    todo = [i if len(i.candidates) <= window else i.model_copy(update={"candidates": [
        i.candidates[j] for j in sorted(first_stage_order(i)[:window])]}) for i in data.instances]
    if not todo:
        raise ValueError(f"data: no validation-split instances in {', '.join(cfg.data)} to select a checkpoint on")
    rel = [data.qrels.get(i.id, i.relevance) for i in todo]
    model, tokenizer = load_model(cfg)
    trainer = Trainer(cfg, load_training_instances(cfg), model, tokenizer, Path(out or run / "selected"),
                      progress=False)
    r = cfg.ranking
    config = RankerConfig(layout=r.layout, window=r.window, stride=r.stride, max_words=r.max_words,
                          batch_size=batch_size)
    named = {f"step-{trainer.load_state(Path(p), optimizer=False)}": Path(p) for p in states}
    names = (["base"] if cfg.lora.r else []) + list(named)
    split = trainer.policy.frozen_layers
    shareable = share_frozen and split and r.layout == "cached" and splittable(trainer.model.config)
    store = SharedPrefixes(split) if shareable else None
    # with a store, the models are kept between chunks of lists when they fit HOLD_BYTES, else merged again for
    # each chunk; without one there is one chunk, and one model at a time
    size = sum(p.numel() for p in trainer.model.parameters()) * 4
    hold = store is not None and size * len(names) <= HOLD_BYTES
    held: dict = {}

    def model_of(name: str):
        if name in held:
            return held[name]
        if name == "base":
            m = trainer.policy.unadapted()
        else:
            trainer.load_state(named[name], optimizer=False)
            m = trainer.policy.merged()
        if hold:
            held[name] = m
        return m

    chunks = [list(range(i, min(i + batch_size, len(todo)))) for i in range(0, len(todo), batch_size)] if store \
        else [list(range(len(todo)))]
    ranked: dict[str, list] = {name: [] for name in names}
    started = time.perf_counter()
    for idx in chunks:
        for name in names:
            backend = TransformersBackend(model_obj=model_of(name), tokenizer=tokenizer, name=name,
                                          max_item_tokens=r.max_item_tokens, shared_prefixes=store)
            ranked[name] += rank_requests(backend, [todo[i].to_request() for i in idx], replace(config))
            del backend  # this model is released (unless held) before the next is merged
            if store is None:
                say(f"{name}: {len(todo)} validation lists ranked")
        if store is not None:
            say(f"validation lists {idx[-1] + 1}/{len(todo)} ranked by {len(names)} models "
                f"(frozen layers run once per prompt: {store.computed} prompts, {store.reused} reuses)")
            store.clear()
    held.clear()
    seconds = time.perf_counter() - started

    def score(name: str) -> dict:
        values = [instance_metrics(resp.ranking, g, KS, _min_grade(i))[PRIMARY[i.scenario]]
                  for i, resp, g in zip(todo, ranked[name], rel, strict=True)]
        return _mean_se(values, todo)

    scores: dict[str, dict] = {"random": _mean_se([random_instance_metrics([c.id for c in i.candidates], g, KS,
                                                                            _min_grade(i))[PRIMARY[i.scenario]]
                                                    for i, g in zip(todo, rel, strict=True)], todo)}
    for name in names:
        scores[name] = s = score(name)
        say(f"{name}: validation primary metric {s['mean']:.4f} ± {s['se']:.4f} ({s['n']} lists)")
    best = max(named, key=lambda k: scores[k]["mean"])
    close = [k for k in named if k != best and scores[k]["mean"] >= scores[best]["mean"] - scores[best]["se"]]
    trainer.load_state(named[best], optimizer=False)
    trainer.out.mkdir(parents=True, exist_ok=True)
    final = trainer.save_final()
    result = {"best": best, "checkpoint": str(named[best]), "within_one_se_of_best": close, "instances": len(todo),
              "scores": scores,
              "metric": "each scenario's primary test metric, per served list (cut to the window), both listing "
                        "orders",
              "frozen_layers_shared": store.split if store is not None else 0, "ranking_seconds": round(seconds, 1),
              "cut_to_window": sum(len(i.candidates) > window for i in data.instances), "window": window}
    (trainer.out / "selection.json").write_text(json.dumps(result, indent=1))
    return {**result, "model": str(final)}


def _mean_se(values: list[float], instances) -> dict:
    n = len(values)
    mean = sum(values) / n
    se = (sum((v - mean) ** 2 for v in values) / (n - 1)) ** 0.5 / n ** 0.5 if n > 1 else 0.0
    by: dict[str, list[float]] = {}
    for v, i in zip(values, instances, strict=True):
        by.setdefault(i.scenario, []).append(v)
    return {"mean": mean, "se": se, "n": n, "by_scenario": {k: sum(v) / len(v) for k, v in sorted(by.items())}}
