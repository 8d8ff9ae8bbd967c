"""How much a cache of the frozen layers' work, kept across updates, could save a training run: replayed on the
run's own episode draws, with the run's own prompts and tokenizer, under memory budgets.

    python benchmarks/bench_frozen_cache.py --data-root data/bench --updates 132 416 2000 \
        --out benchmarks/results/bench_frozen_cache.json

With LoRA on the top layers, the layers below compute the same values for a listed prompt whatever the adapter
learned. Within one update their output is already shared by every pass (`lora.reuse_frozen`). Across updates, a
prompt listed again (the same instance in the same order, a "revisit") could skip them over its prefix, if their
key/value tensors for that prefix had been kept: the cue tokens attend to them at every frozen layer, so the prefix's
output alone is not enough. That costs 2 x frozen layers x key/value heads x head size values per prefix token.

This replays `FastTrainer._draw` (the trainer's own episode draws, seeded by update) for the profile and its data,
encodes each drawn listing with the model's tokenizer (`Policy`'s prompt encoder), and runs a least-recently-used
cache bounded in bytes. `saved_share` is the share of all drawn prefix tokens found in the cache: the share of the
frozen layers' prefix work a run would skip. It bounds the gain from above: the frozen prefix pass is only a part of
an update (the adapted layers, their backward pass and the cues remain), so an update gets faster by less than that.
No model runs; nothing is timed.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections import OrderedDict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench_train_quality import TRAIN_DATA


def kv_bytes_per_token(model_config, frozen_layers: int, bytes_per_value: int) -> int:
    """Bytes of the frozen layers' keys and values for one prefix token."""
    heads = getattr(model_config, "num_key_value_heads", None) or model_config.num_attention_heads
    dim = getattr(model_config, "head_dim", None) or model_config.hidden_size // model_config.num_attention_heads
    return 2 * frozen_layers * heads * dim * bytes_per_value


def replay(draws: list[tuple[tuple, int, str]], budget_bytes: float, per_token: int) -> dict:
    """LRU over (key, prefix tokens, scenario) visits in order: hits and saved prefix tokens per scenario, and the
    most memory the cache held."""
    cache: OrderedDict[tuple, int] = OrderedDict()
    held = peak = 0
    out: dict[str, dict] = {}
    for key, tokens, scenario in draws:
        row = out.setdefault(scenario, {"visits": 0, "hits": 0, "tokens": 0, "saved_tokens": 0})
        row["visits"] += 1
        row["tokens"] += tokens
        if key in cache:
            row["hits"] += 1
            row["saved_tokens"] += tokens
            cache.move_to_end(key)
            continue
        size = tokens * per_token
        if size > budget_bytes:
            continue
        cache[key] = size
        held += size
        while held > budget_bytes:
            _, freed = cache.popitem(last=False)
            held -= freed
        peak = max(peak, held)
    total = sum(r["tokens"] for r in out.values())
    saved = sum(r["saved_tokens"] for r in out.values())
    for r in out.values():
        r["saved_share"] = round(r["saved_tokens"] / r["tokens"], 4) if r["tokens"] else 0.0
    return {"saved_share": round(saved / total, 4) if total else 0.0, "held_gb_max": round(peak / 2**30, 2),
            "by_scenario": out}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(ROOT / "configs" / "cpu.yaml"))
    ap.add_argument("--data-root", default="data/bench", help="the folders bench_train_quality.py ingested")
    ap.add_argument("--updates", type=int, nargs="+", default=[132, 416, 2000], help="run lengths to replay")
    ap.add_argument("--budgets-gb", type=float, nargs="+", default=[1.0, 4.0, 8.0, 1e9],
                    help="cache sizes in GiB (1e9: unbounded)")
    ap.add_argument("--bytes-per-value", type=int, default=2, help="2: keys and values kept in bf16; 4: float32")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "bench_frozen_cache.json"))
    args = ap.parse_args()

    from transformers import AutoConfig, AutoTokenizer

    from iranker.backends.tokens import PromptEncoder
    from iranker.devices import cpu_info
    from iranker.models import resolve_model
    from iranker.prompts import iterative_prompt
    from iranker.train.config import load_config
    from iranker.train.fast import FastTrainer
    from iranker.train.pools import load_training_instances

    root = Path(args.data_root)
    missing = [k for k in TRAIN_DATA if not (root / k).exists()]
    if missing:
        sys.exit(f"--data-root {root}: missing {', '.join(missing)} (run benchmarks/bench_train_quality.py first)")
    cfg = load_config(args.config, {"data": [str((root / k).resolve()) for k in TRAIN_DATA]})
    path = resolve_model(cfg.model)
    model_config = AutoConfig.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    encoder = PromptEncoder(tokenizer, cfg.ranking.max_item_tokens)
    labels = encoder.fast_labels(max(cfg.ranking.window, cfg.pools.max_size))
    frozen = model_config.num_hidden_layers - cfg.lora.top_layers
    per_token = kv_bytes_per_token(model_config, frozen, args.bytes_per_value)

    t0 = time.perf_counter()
    instances = load_training_instances(cfg)
    trainer = FastTrainer(cfg, None, instances)  # only its draws: no policy, no model
    tokens_of: dict[tuple, int] = {}
    draws: list[tuple[tuple, int, str]] = []
    ends: dict[int, int] = {}  # run length in updates -> episodes drawn by then
    for u in range(max(args.updates)):
        for _, _, first in trainer._draw(u):
            key = (first.inst, tuple(first.listing))
            if key not in tokens_of:
                enc = encoder.encode(iterative_prompt(trainer.contexts[key[0]], list(key[1]), alphabet=labels))
                tokens_of[key] = len(enc.head) + sum(len(item) for item in enc.items)
            draws.append((key, tokens_of[key], instances[key[0]].scenario))
        ends[u + 1] = len(draws)
        if u + 1 in args.updates:
            print(f"[bench] drew {u + 1} updates ({len(draws)} episodes)", file=sys.stderr)

    results = []
    for updates in args.updates:
        for gb in args.budgets_gb:
            r = replay(draws[:ends[updates]], gb * 2**30, per_token)
            results.append({"updates": updates, "budget_gb": gb if gb < 1e8 else None, **r})
            print(f"[bench] {updates} updates, {'unbounded' if gb >= 1e8 else f'{gb:g} GiB'}: "
                  f"{r['saved_share']:.1%} of prefix tokens found", file=sys.stderr)
    passage = [t for _, t, s in draws if s == "passage"]
    out = {
        "what": "share of the frozen layers' prefix work a cross-update key/value cache would skip, replayed on the "
                "profile's own episode draws (FastTrainer._draw); an upper bound of the speed gain, no model run",
        "command": "python " + " ".join([Path(sys.argv[0]).as_posix()] + sys.argv[1:]),
        "config": args.config, "model": cfg.model, "frozen_layers": frozen, "adapted_layers": cfg.lora.top_layers,
        "instances": len(instances), "episodes_per_update": cfg.batch_size,
        "kv_bytes_per_token": per_token, "bytes_per_value": args.bytes_per_value,
        "passage_prefix_tokens_mean": round(sum(passage) / len(passage)) if passage else None,
        "passage_window_mb": round(sum(passage) / len(passage) * per_token / 2**20, 1) if passage else None,
        "results": results, "seconds": round(time.perf_counter() - t0, 1),
        "machine": {"cpu": cpu_info(), "python": platform.python_version()},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps({k: out[k] for k in ("kv_bytes_per_token", "passage_window_mb")}), file=sys.stderr)


if __name__ == "__main__":
    main()
