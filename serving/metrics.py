"""Prometheus metrics of the ranking service, served on KServe's /metrics beside its own."""

from prometheus_client import Counter, Gauge, Histogram

REQUESTS = Counter("iranker_requests", "Ranking requests by scenario and outcome", ["scenario", "status"])
LATENCY = Histogram("iranker_request_seconds", "Time from arrival to response of a ranking request, queueing "
                    "included", ["scenario"], buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120))
MODEL_CALLS = Histogram("iranker_model_calls_per_request", "Model calls (elimination decisions) per request",
                        buckets=(1, 2, 5, 10, 20, 50, 100, 200))
BATCH_SIZE = Histogram("iranker_batch_size", "Requests ranked together in one batch",
                       buckets=(1, 2, 4, 8, 16, 32, 64))
PARSE_FAILURES = Counter("iranker_parse_failures", "Elimination decisions whose answer did not parse (a fallback "
                         "was used)", ["scenario"])
QUEUE_DEPTH = Gauge("iranker_queue_depth", "Requests waiting to be ranked")
FEAST_LOOKUPS = Counter("iranker_feast_lookups", "User histories filled in from the Feast online store")
ROUTES = Counter("iranker_routes", "Chat completions answered, by the LLM that answered and the preference",
                 ["route", "preference"])
ROUTE_FALLBACKS = Counter("iranker_route_fallbacks", "LLM attempts that failed (5xx or no answer) before another "
                          "LLM of the ranking answered")
CONNECTIONS_CLOSED = Counter("iranker_connections_closed", "Connections closed before their answer: headers not "
                             "complete in time (header_timeout), one connection too many from an address (per_client), "
                             "the client gone while its request was ranked (client_left: the work is cancelled)",
                             ["reason"])
RESPONSES = Counter("iranker_http_responses", "Answers to POST requests by route family (v1, v2, rerank, chat, feedback, other) "
                    "and status code, whoever gave them (the guard, KServe, the routes)", ["route", "code"])
LOG_EVENTS = Counter("iranker_log_events", "Inference-log CloudEvents (iranker serve --log-url): sent, spooled (the "
                     "sink was down, answered 5xx/408/429, or the queue was full), resent from the spool, rejected "
                     "(the sink refused it for good: another 4xx), dropped (the spool was full or not writable)",
                     ["outcome"])
FEEDBACK = Counter("iranker_feedback", "Outcomes accepted by POST /v1/feedback, by the kind of call they are on (v1, v2, "
                   "rerank, chat)", ["call"])
