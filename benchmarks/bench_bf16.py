"""float32 vs bfloat16 on this CPU, embedded SmolLM2-135M, in one run: ranking agreement and quality, training
cost, prefill and cached-step cost.

(a) Ranking: the transformers backend loaded in float32 and in bfloat16 ranks the same requests with
    `iranker.ranker.rank_requests` (default config: fast mode, cached layout, batches of 16): a seeded sample of
    the TREC DL 2019 BM25 top-20 test queries (trec-dl adapter, split train:0.5,test:0.5 as configs/cpu.yaml),
    MovieLens-100K users of the test split (recbole adapter) and RouterBench routing instances of the test split
    (routerbench adapter). Per scenario: the share of identical rankings, mean Kendall tau between the two
    dtypes' rankings, top-1 agreement, the scenario's metric (passage nDCG@10 over every DL19 judgment, trec_eval
    convention; recommendation MRR; routing nDCG@3) under each dtype and the difference, seconds per dtype.
(b) Training cost: forward + backward of the whole model (full fine-tuning, loss on every token) over a
    600-token sequence: float32; bf16 autocast (float32 master weights, `torch.autocast("cpu", torch.bfloat16)`,
    what a mixed-precision trainer does); a bf16 copy of the model (weights and gradients in bf16). Median of 3
    after one warm-up.
(c) Inference: prefill of 2,000 tokens (no output layer, as `encode_cache`), and one 13-token step over that
    key/value cache (last-position hidden state, as a cached-layout decision), float32 vs a bf16 copy.

Everything on `--threads` threads (default 2). Results and the machine's CPU flags go to the JSON.

    python benchmarks/bench_bf16.py [--passages 20] [--users 20] [--routing 30] [--out benchmarks/results/bench_bf16.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from iranker.backends.transformers import TransformersBackend
from iranker.data import build
from iranker.metrics import ndcg_at_k, reciprocal_rank
from iranker.prompts import build_context, iterative_prompt
from iranker.ranker import rank_requests

METRIC = {"passage": "ndcg@10", "recommendation": "mrr", "routing": "ndcg@3"}


def say(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def machine_info(threads: int) -> dict:
    flags: list[str] = []
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and not model:
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = line.split(":", 1)[1].split()
    except OSError:
        pass
    import transformers

    wanted = ("avx2", "fma", "f16c", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile")
    return {"cpu": model, "machine": platform.machine(), "python": platform.python_version(),
            "torch": torch.__version__, "transformers": transformers.__version__, "torch_threads": threads,
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "mkldnn_bf16_supported": _mkldnn_bf16(),
            "cpu_flags": {f: f in flags for f in wanted}}


def _mkldnn_bf16() -> bool | None:
    """Whether oneDNN reports native bf16 support on this CPU (None: torch does not say)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return None


def idle_share(seconds: float = 3.0) -> float | None:
    """Share of the machine's CPU time that was idle over `seconds` (/proc/stat; None where it is not readable)."""
    def read():
        fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        return fields[3] + fields[4], sum(fields)  # idle + iowait, total
    try:
        i0, t0 = read()
        time.sleep(seconds)
        i1, t1 = read()
    except (OSError, ValueError, IndexError):
        return None
    return (i1 - i0) / max(t1 - t0, 1)


def wait_for_idle(max_wait: float, threshold: float = 0.9) -> dict:
    """Wait (up to `max_wait` s) until the machine is idle (other processes would distort every timing here)."""
    t = time.perf_counter()
    idle = idle_share()
    while idle is not None and idle < threshold and time.perf_counter() - t < max_wait:
        say(f"machine busy (idle {idle:.0%}): waiting for it to be idle before timing anything")
        time.sleep(27)
        idle = idle_share()
    return {"idle_share_at_start": idle, "waited_s": round(time.perf_counter() - t, 1)}


class Clock:
    """Wall seconds of a block and the share of `threads` cores this process got meanwhile (1.0: no contention)."""

    def __init__(self, threads: int):
        self.threads = threads

    def __enter__(self):
        self.t, self.c = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.t
        self.cpu_share = (time.process_time() - self.c) / max(self.seconds * self.threads, 1e-9)


# ---- (a) ranking --------------------------------------------------------------------------------------------------

def sample(instances: list, n: int, seed: int) -> list:
    rows = sorted(instances, key=lambda i: i.id)
    return sorted(random.Random(seed).sample(rows, min(n, len(rows))), key=lambda i: i.id)


def load_requests(shared: Path, n_passages: int, n_users: int, n_routing: int, seed: int):
    """[(scenario, instance, relevance used for the metric)], the passage relevance being every DL19 judgment."""
    out = []
    dl = build("trec-dl", shared / "passage", {"first_stage": "*bm25*", "split": "train:0.5,test:0.5",
                                               "dataset": "dl19-bm25-top20"})
    qrels: dict[str, dict[str, float]] = {}
    for q, d, g in dl.tables["qrels"].itertuples(index=False):
        qrels.setdefault(str(q), {})[str(d)] = float(g)
    for i in sample([i for i in dl.instances if i.split == "test"], n_passages, seed):
        out.append(("passage", i, qrels.get(i.id.removeprefix("dl19-bm25-top20-q"), {})))
    ml = build("recbole", shared / "recommendation" / "ml-100k", {"seed": str(seed)})
    for i in sample([i for i in ml.instances if i.split == "test"], n_users, seed):
        out.append(("recommendation", i, i.relevance))
    rb = build("routerbench", shared / "routing" / "routerbench", {"seed": str(seed)})
    for i in sample([i for i in rb.instances if i.split == "test"], n_routing, seed):
        out.append(("routing", i, i.relevance))
    return out


def metric(scenario: str, ranking: list[str], relevance: dict[str, float]) -> float:
    if scenario == "recommendation":
        return reciprocal_rank(ranking, relevance)
    return ndcg_at_k(ranking, relevance, 10 if scenario == "passage" else 3)


def kendall_tau(a: list[str], b: list[str]) -> float:
    """Kendall's tau between two orders of the same items (no ties)."""
    pos = {x: k for k, x in enumerate(b)}
    r = [pos[x] for x in a]
    n = len(r)
    if n < 2:
        return 1.0
    s = sum((1 if r[j] > r[i] else -1) for i in range(n) for j in range(i + 1, n))
    return s / (n * (n - 1) / 2)


def bench_ranking(model: str | None, rows, threads: int) -> dict:
    """Both dtypes loaded side by side; each scenario ranked in float32 then right after in bf16 (same load)."""
    reqs = [inst.to_request() for _, inst, _ in rows]
    scenarios = sorted({s for s, _, _ in rows}, key=list(METRIC).index)
    backends = {}
    for name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        t = time.perf_counter()
        backends[name] = TransformersBackend(model, dtype=dtype, device="cpu")
        say(f"{name}: model loaded in {time.perf_counter() - t:.1f}s")
    # warm-up (not timed): the shortest request of each scenario, both dtypes
    warm = [min((k for k, r in enumerate(rows) if r[0] == s), key=lambda k: len(reqs[k].candidates))
            for s in scenarios]
    for b in backends.values():
        rank_requests(b, [reqs[k] for k in warm])
    rankings: dict[str, list[list[str]]] = {n: [[] for _ in reqs] for n in backends}
    seconds: dict[str, dict[str, float]] = {n: {} for n in backends}
    share: dict[str, dict[str, float]] = {n: {} for n in backends}
    for scenario in scenarios:
        idx = [k for k, (s, _, _) in enumerate(rows) if s == scenario]
        for name, backend in backends.items():
            with Clock(threads) as c:
                resps = rank_requests(backend, [reqs[k] for k in idx])
            seconds[name][scenario], share[name][scenario] = c.seconds, c.cpu_share
            for k, resp in zip(idx, resps):
                rankings[name][k] = resp.ranking
            say(f"{name}: {scenario} ({len(idx)} instances) {c.seconds:.1f}s (cpu share {c.cpu_share:.2f})")
    del backends
    out: dict = {"config": "rank_requests defaults: fast mode, cached layout, batch_size 16, speculate 1",
                 "scenarios": {}}
    for scenario in scenarios:
        idx = [k for k, (s, _, _) in enumerate(rows) if s == scenario]
        f32 = [rankings["float32"][k] for k in idx]
        b16 = [rankings["bfloat16"][k] for k in idx]
        m32 = [metric(scenario, r, rows[k][2]) for k, r in zip(idx, f32)]
        m16 = [metric(scenario, r, rows[k][2]) for k, r in zip(idx, b16)]
        out["scenarios"][scenario] = {
            "instances": len(idx), "candidates": sorted({len(r) for r in f32}),
            "identical_rankings": sum(a == b for a, b in zip(f32, b16)) / len(idx),
            "mean_kendall_tau": statistics.mean(kendall_tau(a, b) for a, b in zip(f32, b16)),
            "top1_agreement": sum(a[0] == b[0] for a, b in zip(f32, b16)) / len(idx),
            "metric": METRIC[scenario],
            "float32": statistics.mean(m32), "bfloat16": statistics.mean(m16),
            "bf16_minus_fp32": statistics.mean(m16) - statistics.mean(m32),
            "seconds": {"float32": seconds["float32"][scenario], "bfloat16": seconds["bfloat16"][scenario]},
            "cpu_share": {"float32": share["float32"][scenario], "bfloat16": share["bfloat16"][scenario]},
            "bf16_speedup": seconds["float32"][scenario] / seconds["bfloat16"][scenario],
            "instance_ids": [rows[k][1].id for k in idx],
        }
    tot = {n: sum(seconds[n].values()) for n in seconds}
    out["total_seconds"] = tot
    out["bf16_speedup"] = tot["float32"] / tot["bfloat16"]
    all_f32, all_b16 = rankings["float32"], rankings["bfloat16"]
    out["all"] = {"instances": len(reqs),
                  "identical_rankings": sum(a == b for a, b in zip(all_f32, all_b16)) / len(reqs),
                  "mean_kendall_tau": statistics.mean(kendall_tau(a, b) for a, b in zip(all_f32, all_b16)),
                  "top1_agreement": sum(a[0] == b[0] for a, b in zip(all_f32, all_b16)) / len(reqs)}
    return out


# ---- (b) training cost, (c) prefill and cached step ---------------------------------------------------------------

def interleaved(fns: dict, repeats: int, threads: int) -> dict:
    """{name: (median seconds, [seconds], [cpu share])}: one warm-up each, then `repeats` rounds running every
    variant once per round (so a change of load hits all variants alike)."""
    for fn in fns.values():
        fn()
    runs: dict = {n: ([], []) for n in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            with Clock(threads) as c:
                fn()
            runs[name][0].append(c.seconds)
            runs[name][1].append(c.cpu_share)
    return {n: (statistics.median(t), t, sh) for n, (t, sh) in runs.items()}


def bench_training(model32, ids: torch.Tensor, repeats: int, threads: int) -> dict:
    model16 = copy.deepcopy(model32).to(torch.bfloat16)

    def step(model, autocast: bool):
        def run():
            model.zero_grad(set_to_none=True)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
        return run

    out: dict = {"tokens": ids.shape[1], "what": "forward + backward, full fine-tuning (every weight trainable), loss "
                 f"on every token, batch 1; median of {repeats} rounds (variants interleaved) after one warm-up"}
    model32.train()
    model16.train()
    timed = interleaved({"float32": step(model32, False), "bf16_autocast": step(model32, True),
                         "bf16_model": step(model16, False)}, repeats, threads)
    model32.zero_grad(set_to_none=True)
    model32.eval()
    for name, (med, times, sh) in timed.items():
        out[name] = {"seconds": med, "runs": times, "cpu_share": sh}
        say(f"training {name}: {med:.2f}s (runs {', '.join(f'{t:.2f}' for t in times)})")
    out["bf16_autocast_speedup"] = out["float32"]["seconds"] / out["bf16_autocast"]["seconds"]
    out["bf16_model_speedup"] = out["float32"]["seconds"] / out["bf16_model"]["seconds"]
    out["variants"] = {"bf16_autocast": "float32 weights, torch.autocast('cpu', dtype=torch.bfloat16): matmuls in "
                                        "bf16, master weights and gradients float32 (mixed-precision training)",
                       "bf16_model": "a bfloat16 copy of the model: weights, activations and gradients in bf16"}
    del model16
    return out


@torch.inference_mode()
def bench_inference(model32, prompt_ids: torch.Tensor, step_ids: torch.Tensor, repeats: int,
                    step_repeats: int, threads: int) -> dict:
    model16 = copy.deepcopy(model32).to(torch.bfloat16)
    n, m = prompt_ids.shape[1], step_ids.shape[1]
    out: dict = {"prefill_tokens": n, "step_tokens": m,
                 "what": f"prefill: the base model (no output layer) over {n} tokens with use_cache, median of "
                         f"{repeats}; step: {m} tokens over that cache (last hidden state), the cache cropped back "
                         f"after each, median of {step_repeats}; dtypes interleaved, one warm-up each"}
    positions = torch.arange(n, n + m).unsqueeze(0)
    prefill, step, caches = {}, {}, {}
    for name, model in (("float32", model32), ("bfloat16", model16)):
        base = model.base_model
        prefill[name] = lambda base=base: base(input_ids=prompt_ids, use_cache=True).past_key_values
        cache = caches[name] = prefill[name]()

        def one_step(base=base, cache=cache):
            base(input_ids=step_ids, past_key_values=cache, position_ids=positions, use_cache=True)
            cache.crop(-m)  # remove the step's tokens (negative: "this many" in transformers 4 and 5)

        step[name] = one_step
    t_prefill = interleaved(prefill, repeats, threads)
    t_step = interleaved(step, step_repeats, threads)
    assert all(c.get_seq_length() == n for c in caches.values()), "the step cache was not cropped back"
    for name in prefill:
        (pm, pt, ps), (sm, st, ss) = t_prefill[name], t_step[name]
        out[name] = {"prefill_s": pm, "prefill_runs": pt, "prefill_cpu_share": ps,
                     "step_s": sm, "step_runs": st, "step_cpu_share": ss}
        say(f"inference {name}: prefill {pm:.2f}s, step {sm * 1000:.1f}ms")
    out["prefill_bf16_speedup"] = out["float32"]["prefill_s"] / out["bfloat16"]["prefill_s"]
    out["step_bf16_speedup"] = out["float32"]["step_s"] / out["bfloat16"]["step_s"]
    del model16
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--model", default=None, help="default: the embedded SmolLM2-135M")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "bench_bf16.json"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--passages", type=int, default=20, help="DL19 test queries (BM25 top-20)")
    ap.add_argument("--users", type=int, default=20, help="MovieLens-100K test users")
    ap.add_argument("--routing", type=int, default=30, help="RouterBench test instances")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train-tokens", type=int, default=600)
    ap.add_argument("--prefill-tokens", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--parts", default="ranking,training,inference",
                    help="which parts to run (comma-separated; on a CPU without AVX-512 BF16 the bf16 training part "
                         "takes very long)")
    ap.add_argument("--wait-idle", type=float, default=0,
                    help="wait up to this many seconds for an idle machine before starting (default: do not wait)")
    args = ap.parse_args()
    from iranker.logs import setup

    setup()  # the library's progress lines on stderr
    shared = Path(args.shared)
    if not shared.exists():
        sys.exit(f"public data not found at {shared} (--shared)")
    torch.set_num_threads(args.threads)
    quiet = wait_for_idle(args.wait_idle)
    t_all = time.perf_counter()
    result: dict = {"model": args.model or "smollm2-135m (embedded: Q4_1 GGUF dequantised to float32)",
                    "machine": machine_info(torch.get_num_threads()), "seed": args.seed,
                    "load_average_at_start": os.getloadavg(), **quiet}

    rows = load_requests(shared, args.passages, args.users, args.routing, args.seed)
    say(f"{len(rows)} requests: " + ", ".join(f"{s} {sum(r[0] == s for r in rows)}" for s in METRIC))
    parts = set(args.parts.split(","))
    result["parts"] = sorted(parts)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if "ranking" in parts:
        result["ranking"] = bench_ranking(args.model, rows, args.threads)
        out.write_text(json.dumps(result, indent=1) + "\n")  # what is measured so far, in case a later part is cut

    # (b) and (c) on the float32 model and a bf16 copy of it; the token ids come from a real DL19 prompt.
    backend = TransformersBackend(args.model, dtype=torch.float32, device="cpu")
    encoded = max((backend.encoder.encode(iterative_prompt(build_context(r[1].to_request()),
                                                           list(range(len(r[1].candidates))))) for r in rows),
                  key=len)  # the longest prompt: a DL19 query with its 20 passages
    ids, enc_tail = encoded.ids, encoded.tail
    if len(ids) < max(args.prefill_tokens, args.train_tokens):
        say(f"the longest prompt has {len(ids)} tokens; repeating it to {args.prefill_tokens}")
        ids = ids * (max(args.prefill_tokens, args.train_tokens) // len(ids) + 1)
    model = backend.model
    train_ids = torch.tensor([ids[: args.train_tokens]])
    if "training" in parts:
        result["training"] = bench_training(model, train_ids, args.repeats, args.threads)
        out.write_text(json.dumps(result, indent=1) + "\n")
    step = (enc_tail * 13)[:13]  # the prompt's own question + assistant header, 13 tokens
    if "inference" in parts:
        result["inference"] = bench_inference(model, torch.tensor([ids[: args.prefill_tokens]]),
                                              torch.tensor([step]), args.repeats, 10, args.threads)

    speed = result["bf16_speedup"] = {}
    if "ranking" in result:
        r = result["ranking"]
        speed.update({"ranking (all requests)": r["bf16_speedup"],
                      **{f"ranking {s}": v["bf16_speedup"] for s, v in r["scenarios"].items()}})
    if "training" in result:
        t = result["training"]
        speed.update({"training fwd+bwd, autocast": t["bf16_autocast_speedup"],
                      "training fwd+bwd, bf16 model": t["bf16_model_speedup"]})
    if "inference" in result:
        i = result["inference"]
        speed.update({f"prefill {i['prefill_tokens']} tokens": i["prefill_bf16_speedup"],
                      f"cached step {i['step_tokens']} tokens": i["step_bf16_speedup"]})
    result["note"] = ("speedup = float32 seconds / bf16 seconds (>1: bf16 faster). cpu_share = CPU seconds of this "
                      "process / (wall seconds x threads): below ~0.9 other processes competed for the cores. bf16 "
                      "label logits are rounded to bf16 before the choice, so near-ties between candidates can "
                      "flip.")
    result["run_seconds"] = time.perf_counter() - t_all
    result["load_average_at_end"] = os.getloadavg()
    result["idle_share_at_end"] = idle_share()
    result["command"] = "python benchmarks/bench_bf16.py " + " ".join(sys.argv[1:])
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: result[k] for k in ("machine", "bf16_speedup")}, indent=1))
    for s, v in result.get("ranking", {}).get("scenarios", {}).items():
        print(f"{s:15s} identical {v['identical_rankings']:.2f}  tau {v['mean_kendall_tau']:.3f}  top1 "
              f"{v['top1_agreement']:.2f}  {v['metric']} fp32 {v['float32']:.4f} bf16 {v['bfloat16']:.4f} "
              f"({v['bf16_minus_fp32']:+.4f})  {v['seconds']['float32']:.1f}s vs {v['seconds']['bfloat16']:.1f}s")


if __name__ == "__main__":
    main()
