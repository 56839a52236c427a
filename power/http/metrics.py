"""Prometheus metrics and the per-model token usage behind `/metrics` and `/v1/usage`."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable

import attrs
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from power.http import request_log

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


@attrs.define
class ModelUsage:
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0


class Metrics:
    """One registry per server (tests start many servers in one process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.started = time.time()
        self.requests = Counter(
            "power_http_requests",
            "HTTP requests answered",
            ["route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "power_http_request_seconds",
            "Time to the complete response",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.ttft = Histogram(
            "power_time_to_first_token_seconds",
            "Time from request to the first generated token",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.tokens_in = Counter(
            "power_prompt_tokens",
            "Prompt tokens (cached ones included)",
            ["model"],
            registry=self.registry,
        )
        self.tokens_cached = Counter(
            "power_prompt_cached_tokens",
            "Prompt tokens taken from the KV cache instead of being evaluated",
            ["model"],
            registry=self.registry,
        )
        self.tokens_out = Counter(
            "power_generated_tokens", "Tokens generated", ["model"], registry=self.registry
        )
        self.model_events = Counter(
            "power_model_events",
            "Model loads, unloads, evictions, expiries",
            ["event"],
            registry=self.registry,
        )
        self.loaded_models = Gauge(
            "power_loaded_models", "Models in memory", registry=self.registry
        )
        self.queue_depth = Gauge(
            "power_queue_depth",
            "Requests waiting for a model or a sequence",
            registry=self.registry,
        )
        self.active_sequences = Gauge(
            "power_active_sequences", "Sequences being generated", registry=self.registry
        )
        self.prompt_cache_saves = Counter(
            "power_prompt_cache_saves",
            "Prompt prefixes whose KV cells were saved to the persistent prompt cache",
            registry=self.registry,
        )
        self.prompt_cache_saved_bytes = Counter(
            "power_prompt_cache_saved_bytes",
            "Bytes written to the persistent prompt cache",
            registry=self.registry,
        )
        self.prompt_cache_restores = Counter(
            "power_prompt_cache_restores",
            "Prompts whose prefix was restored from the persistent prompt cache",
            registry=self.registry,
        )
        self.prompt_cache_restored_tokens = Counter(
            "power_prompt_cache_restored_tokens",
            "Prompt tokens restored from the persistent prompt cache instead of evaluated",
            registry=self.registry,
        )
        self.prompt_cache_removed = Counter(
            "power_prompt_cache_removed_files",
            "Prompt cache files removed (least recently used, or unusable)",
            registry=self.registry,
        )
        self.prompt_cache_bytes = Gauge(
            "power_prompt_cache_bytes",
            "Bytes the persistent prompt cache takes on disk",
            registry=self.registry,
        )
        self.usage: dict[str, ModelUsage] = defaultdict(ModelUsage)

    def prompt_cache_event(self, kind: str, amount: int) -> None:
        """`PromptCache.on_event`: "save" (bytes), "restore" (tokens), "remove" (files)."""
        if kind == "save":
            self.prompt_cache_saves.inc()
            self.prompt_cache_saved_bytes.inc(amount)
        elif kind == "restore":
            self.prompt_cache_restores.inc()
            self.prompt_cache_restored_tokens.inc(amount)
        elif kind == "remove":
            self.prompt_cache_removed.inc(amount)

    def model_event(self, kind: str, name: str) -> None:
        self.model_events.labels(event=kind).inc()

    def record_generation(
        self, model: str, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0
    ) -> None:
        """One finished request: its whole prompt (`cached_tokens` of it came from the KV
        cache instead of being evaluated) and what it generated."""
        self.tokens_in.labels(model=model).inc(prompt_tokens)
        self.tokens_cached.labels(model=model).inc(cached_tokens)
        self.tokens_out.labels(model=model).inc(completion_tokens)
        usage = self.usage[model]
        usage.requests += 1
        usage.prompt_tokens += prompt_tokens
        usage.completion_tokens += completion_tokens
        request_log.note(model=model, prompt_tokens=prompt_tokens, eval_tokens=completion_tokens)

    def render(self, refresh: Callable[[], None] | None = None) -> bytes:
        if refresh is not None:
            refresh()
        return generate_latest(self.registry)
