"""Hypothesis fuzzing of every HTTP route of a real `power serve` with malformed requests.

The contract checked for every answer: never a 5xx (501 excepted, documented as "not
implemented"), a 4xx always carries a JSON body with an `error` (a string on native routes, an
object with a string `message` on OpenAI routes), a 2xx stream is well-formed NDJSON, and the
server still answers `GET /` with `Ollama is running` afterwards.

Two kinds of bodies, so that the fuzz never costs real compute nor reaches the network:

- Malformed bodies (raw bytes, invalid JSON, JSON of the wrong shape, objects with fields of the
  wrong types, huge numbers, NaN/Infinity, unicode, nesting, random keys) where `model` is never
  the name of a stored model: everything is validated and then refused (404 at the latest). On
  /api/pull and /api/push `model`/`name` are never *valid* model names either, since a valid name
  would make the server try `registry.ollama.ai` (no internet here: each attempt retries for
  about 15 s); a well-formed pull against an unreachable registry is tested once in
  test_http_security.py.
- Well-typed-but-odd bodies against the real models, kept cheap: generation is always capped at
  one token (`options.num_predict`, `max_tokens`), load options (`num_ctx`, ...) and
  `keep_alive` are never fuzzed there (a fuzzed `num_ctx` would reload models with huge caches),
  and `context` holds only in-vocabulary token ids (see test_generate_context_out_of_vocabulary).

The servers run on a private copy of the shared test store (hard links), so the store-mutating
routes (copy, delete, create, blobs) cannot disturb other tests.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import GEMMA, MINILM, QWEN, run_power_server
from power.registry.names import InvalidNameError, ModelName

STORED_FRAGMENTS = ("gemma3", "qwen2.5-coder", "all-minilm")

FUZZ_SETTINGS = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
REAL_MODEL_SETTINGS = settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

NATIVE_POST_ROUTES = [
    "/api/generate",
    "/api/chat",
    "/api/embed",
    "/api/embeddings",
    "/api/pull",
    "/api/push",
    "/api/create",
    "/api/show",
    "/api/copy",
]
#: Routes whose 4xx bodies carry `error.message` (OpenAI's shape; Anthropic's has it too).
OPENAI_POST_ROUTES = [
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/responses",
    "/v1/messages",
    "/v1/messages/count_tokens",
]
GET_ROUTES = [
    "/",
    "/api/version",
    "/api/status",
    "/api/tags",
    "/api/ps",
    "/health",
    "/metrics",
    "/v1/models",
    "/v1/usage",
]

#: The JSON fields each route reads, so that fuzzed objects reach past the first check.
ROUTE_FIELDS: dict[str, tuple[str, ...]] = {
    "/api/generate": [
        "prompt",
        "suffix",
        "system",
        "template",
        "context",
        "stream",
        "raw",
        "format",
        "keep_alive",
        "images",
        "options",
        "think",
        "truncate",
        "shift",
        "logprobs",
        "top_logprobs",
        "_debug_render_only",
    ],
    "/api/chat": [
        "messages",
        "tools",
        "format",
        "stream",
        "keep_alive",
        "options",
        "think",
        "truncate",
        "shift",
        "logprobs",
        "top_logprobs",
        "_debug_render_only",
    ],
    "/api/embed": ["input", "truncate", "dimensions", "keep_alive", "options"],
    "/api/embeddings": ["prompt", "keep_alive", "options"],
    "/api/pull": ["insecure", "stream", "username", "password"],
    "/api/push": ["insecure", "stream"],
    "/api/create": [
        "from",
        "files",
        "adapters",
        "template",
        "system",
        "license",
        "parameters",
        "messages",
        "quantize",
        "quantization",
        "modelfile",
        "stream",
    ],
    "/api/show": ["verbose", "system", "template", "options"],
    "/api/copy": (),
    "/api/delete": (),
    "/v1/chat/completions": [
        "messages",
        "stream",
        "stream_options",
        "max_tokens",
        "max_completion_tokens",
        "seed",
        "stop",
        "temperature",
        "top_p",
        "frequency_penalty",
        "presence_penalty",
        "response_format",
        "tools",
        "tool_choice",
        "logprobs",
        "top_logprobs",
        "reasoning_effort",
        "reasoning",
        "think",
        "n",
        "options",
        "keep_alive",
    ],
    "/v1/completions": [
        "prompt",
        "suffix",
        "stream",
        "stream_options",
        "max_tokens",
        "seed",
        "stop",
        "temperature",
        "top_p",
        "frequency_penalty",
        "presence_penalty",
        "logprobs",
        "echo",
        "n",
        "options",
        "keep_alive",
    ],
    "/v1/embeddings": [
        "input",
        "encoding_format",
        "dimensions",
        "truncate",
        "options",
        "keep_alive",
    ],
    "/v1/responses": [
        "input",
        "instructions",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "temperature",
        "top_p",
        "max_output_tokens",
        "text",
        "reasoning",
        "stream",
        "previous_response_id",
        "options",
        "keep_alive",
    ],
    "/v1/messages": [
        "max_tokens",
        "messages",
        "system",
        "stop_sequences",
        "temperature",
        "top_p",
        "top_k",
        "tools",
        "tool_choice",
        "thinking",
        "metadata",
        "stream",
        "options",
        "keep_alive",
    ],
    "/v1/messages/count_tokens": ["messages", "system", "tools", "tool_choice", "thinking"],
}

OPTION_NAMES = [
    "num_ctx",
    "num_predict",
    "temperature",
    "top_k",
    "top_p",
    "min_p",
    "seed",
    "stop",
    "num_thread",
    "num_batch",
    "num_gpu",
    "repeat_penalty",
    "repeat_last_n",
    "mirostat",
    "mirostat_tau",
    "mirostat_eta",
    "typical_p",
    "presence_penalty",
    "frequency_penalty",
    "use_mmap",
    "numa",
    "penalize_newline",
    "num_keep",
    "bogus_option",
]


# ---------------------------------------------------------------- fixtures


def private_store_copy(model_store: Path, root: Path) -> Path:
    """A store with the shared test models, as hard links (cheap; the blobs are never written)."""
    destination = root / "models"
    shutil.copytree(model_store, destination, copy_function=os.link)
    return destination


@pytest.fixture(scope="module")
def fuzz_server(model_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    store = private_store_copy(model_store, tmp_path_factory.mktemp("fuzz-store"))
    with run_power_server(store, {"POWER_NUM_PARALLEL": "2"}) as url:
        yield url


@pytest.fixture(scope="module")
def http(fuzz_server: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=fuzz_server, timeout=60) as client:
        yield client


# ---------------------------------------------------------------- strategies

huge_ints = st.sampled_from([2**31, 2**63, -(2**63) - 1, 10**30, -(10**40)])
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    huge_ints,
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.sampled_from(["", " ", "json", "\x00", "5m", "-1", "0", "true", "null", "é🦙\u202e"]),
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.text(max_size=12), children, max_size=4),
    ),
    max_leaves=12,
)


def is_valid_model_name(text: str) -> bool:
    try:
        ModelName.parse(text)
    except InvalidNameError:
        return False
    except Exception:  # noqa: BLE001 - anything the parser refuses counts as invalid
        return False
    return True


def is_stored_name(value: Any) -> bool:
    return isinstance(value, str) and any(f in value.lower() for f in STORED_FRAGMENTS)


#: `model` values that are never a stored model (but often a well-formed name).
missing_models = st.one_of(
    st.text(max_size=30),
    st.from_regex(r"\A[a-z][a-z0-9._-]{0,20}(:[a-z0-9._-]{1,10})?\Z"),
    st.sampled_from(["fuzz-missing", "library/fuzz-missing:tag", "a/b/c/d/e", "x:" + "y" * 200]),
    json_values,
).filter(lambda v: not is_stored_name(v))

#: `model` values that are never a valid name: safe for pull/push (no network).
invalid_names = st.one_of(
    st.text(max_size=30).filter(lambda s: not is_valid_model_name(s)),
    st.sampled_from(["", "bad name", "a:b:c", "x/" * 8, "\x00", "🦙", "model?"]),
    json_scalars.filter(lambda v: not isinstance(v, str)),
    st.lists(st.text(max_size=5), max_size=2),
)

options_values = st.one_of(
    json_values,
    st.dictionaries(st.sampled_from(OPTION_NAMES), json_values, max_size=4),
)


def field_values(name: str) -> st.SearchStrategy[Any]:
    """Mostly the wrong type, sometimes a plausible one, for a field of a request."""
    plausible: dict[str, st.SearchStrategy[Any]] = {
        "options": options_values,
        "parameters": options_values,
        "messages": st.lists(
            st.fixed_dictionaries(
                {"role": st.one_of(st.sampled_from(["user", "system", "tool"]), json_values)},
                optional={"content": json_values, "images": json_values, "tool_calls": json_values},
            ),
            max_size=3,
        ),
        "format": st.one_of(st.just("json"), st.dictionaries(st.text(max_size=8), json_values)),
        "keep_alive": st.one_of(st.sampled_from(["5m", "-1", "1h30m", "10x", "1e9h"]), huge_ints),
        "images": st.lists(st.one_of(st.just("aGVsbG8="), st.text(max_size=8)), max_size=2),
        "context": st.lists(st.one_of(st.integers(), huge_ints), max_size=4),
    }
    if name in plausible:
        return st.one_of(plausible[name], json_values)
    return json_values


def object_bodies(route: str, model_names: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    fields = ROUTE_FIELDS.get(route, ())
    optional = {name: field_values(name) for name in fields}
    if route == "/api/copy":
        optional = {"source": model_names, "destination": model_names}
    required = {} if route == "/api/copy" else {"model": model_names}
    if route in ("/api/pull", "/api/push", "/api/create", "/api/show", "/api/delete"):
        optional["name"] = model_names
    objects = st.fixed_dictionaries(required, optional=optional)
    extra = st.dictionaries(st.text(max_size=10), json_values, max_size=3)
    return st.builds(lambda obj, more: {**more, **obj}, objects, extra)


def nested(depth: int) -> str:
    return '{"a":' * depth + "1" + "}" * depth


def bodies(route: str) -> st.SearchStrategy[bytes]:
    """Request bodies for `route`, as bytes."""
    names = invalid_names if route in ("/api/pull", "/api/push") else missing_models
    as_json = st.one_of(json_values, object_bodies(route, names)).map(
        lambda v: json.dumps(v).encode()  # allow_nan: NaN/Infinity reach the server
    )
    raw = st.one_of(
        st.binary(max_size=64),
        st.text(max_size=64).map(str.encode),
        st.sampled_from([b"", b"{", b'{"model":', b"\xff\xfe{}", b"[" * 50, b'{"model":"x"}x']),
        # nesting within Python's recursion limit (deeper: test_deeply_nested_json_is_a_400)
        st.integers(1, 200).map(lambda d: nested(d).encode()),
    )
    return st.one_of(as_json, as_json, raw)


# ---------------------------------------------------------------- the contract


def check_answer(response: httpx.Response, *, openai: bool) -> None:
    """Never a 5xx (501 excepted); a JSON error on 4xx; well-formed lines in 2xx streams."""
    status = response.status_code
    assert status < 500 or status == 501, (status, response.text[:500])
    if 400 <= status < 500:
        body = response.json()
        if openai:
            assert isinstance(body["error"]["message"], str), body
        else:
            assert isinstance(body["error"], str), body
    elif response.headers.get("content-type", "").startswith("application/x-ndjson"):
        for line in response.text.splitlines():
            assert isinstance(json.loads(line), dict)


def post(http: httpx.Client, path: str, body: bytes, method: str = "POST") -> httpx.Response:
    return http.request(method, path, content=body, headers={"Content-Type": "application/json"})


def assert_still_running(http: httpx.Client) -> None:
    answer = http.get("/")
    assert answer.status_code == 200 and answer.text == "Ollama is running"


# ---------------------------------------------------------------- malformed bodies


@pytest.mark.parametrize("route", NATIVE_POST_ROUTES)
def test_native_post_routes_refuse_malformed_bodies(http: httpx.Client, route: str):
    @FUZZ_SETTINGS
    @given(body=bodies(route))
    def fuzz(body: bytes) -> None:
        check_answer(post(http, route, body), openai=False)

    fuzz()
    assert_still_running(http)


def test_delete_refuses_malformed_bodies(http: httpx.Client):
    @FUZZ_SETTINGS
    @given(body=bodies("/api/delete"))
    def fuzz(body: bytes) -> None:
        check_answer(post(http, "/api/delete", body, method="DELETE"), openai=False)

    fuzz()
    assert http.post("/api/show", json={"model": GEMMA}).status_code == 200  # still stored
    assert_still_running(http)


@pytest.mark.parametrize("route", OPENAI_POST_ROUTES)
def test_openai_routes_refuse_malformed_bodies(http: httpx.Client, route: str):
    @FUZZ_SETTINGS
    @given(body=bodies(route))
    def fuzz(body: bytes) -> None:
        check_answer(post(http, route, body), openai=True)

    fuzz()
    assert_still_running(http)


blob_digests = st.one_of(
    st.text(max_size=80),
    st.from_regex(r"\Asha256[:-][0-9a-fA-F]{0,70}\Z"),
    st.just("sha256:" + "0" * 64),
)


def test_blob_routes_refuse_odd_digests_and_bodies(http: httpx.Client):
    @FUZZ_SETTINGS
    @given(
        digest=blob_digests,
        method=st.sampled_from(["POST", "HEAD", "GET", "DELETE"]),
        body=st.binary(max_size=64),
    )
    def fuzz(digest: str, method: str, body: bytes) -> None:
        path = "/api/blobs/" + quote(digest, safe=":")
        # Connection: close: a bad digest is answered before the body is read, which leaves a
        # kept-alive connection hanging (test_http_security.py shows that bug on its own)
        response = http.request(
            method,
            path,
            content=body if method == "POST" else None,
            headers={"Connection": "close"},
        )
        assert response.status_code < 500, (method, digest, response.status_code, response.text)
        if 400 <= response.status_code < 500 and method != "HEAD":
            assert isinstance(response.json()["error"], str)

    fuzz()
    assert_still_running(http)


path_segments = st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters="/?#"), max_size=20
).map(lambda s: quote(s, safe=":@!$&'()*+,;="))
query_strings = st.one_of(
    st.just(""),
    st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=3).map(
        lambda d: "?" + str(httpx.QueryParams(d))
    ),
    st.sampled_from(["?", "?&&", "?a=%ff", "?=", "?a[]=1&a[]=2"]),
)


def test_get_routes_with_odd_paths_and_query_strings(http: httpx.Client):
    @FUZZ_SETTINGS
    @given(
        base=st.sampled_from([*GET_ROUTES, "/v1/models/", "/api/", "/api/blobs/", "/nope/"]),
        tail=st.one_of(st.just(""), path_segments),
        query=query_strings,
    )
    def fuzz(base: str, tail: str, query: str) -> None:
        # "/" and "/api/version" take no tail: a tail makes an unknown path (404)
        response = http.get(base + tail + query)
        assert response.status_code < 500, (base + tail + query, response.text[:300])
        if response.status_code >= 400:
            assert isinstance(response.json()["error"], str | dict)

    fuzz()
    assert_still_running(http)


def test_deeply_nested_json_is_a_400(http: httpx.Client):
    """Nesting beyond Python's recursion limit is invalid JSON for the server, not a crash."""
    for route in ("/api/generate", "/api/chat", "/v1/chat/completions"):
        for body in ("[" * 100_000, nested(100_000)):
            check_answer(post(http, route, body.encode()), openai=route.startswith("/v1/"))
    assert_still_running(http)


# ---------------------------------------------------------------- odd but well-typed, real models

short_text = st.text(max_size=40)
cheap_options = {"num_predict": 1}


def generate_bodies() -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {"model": st.just(GEMMA), "stream": st.booleans()},
        optional={
            "prompt": short_text,
            "system": short_text,
            "template": st.one_of(
                short_text, st.sampled_from(["{{ .Prompt }}", "{{", "{{ end }}"])
            ),
            "suffix": short_text,
            "raw": st.booleans(),
            "format": st.one_of(
                st.just("json"),
                st.dictionaries(
                    st.sampled_from(["type", "properties", "items", "enum"]), json_values
                ),
            ),
            "think": st.one_of(st.booleans(), st.sampled_from(["low", "high"])),
            "images": st.lists(st.just("aGVsbG8="), max_size=1),
            "context": st.lists(st.integers(0, 1000), max_size=4),
            "logprobs": st.booleans(),
            "top_logprobs": st.integers(-2, 25),
            "truncate": st.booleans(),
            "shift": st.booleans(),
        },
    ).map(lambda body: {**body, "options": cheap_options})


def chat_bodies() -> st.SearchStrategy[dict[str, Any]]:
    message = st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "assistant", "system", "tool", "USER", "robot"])},
        optional={"content": short_text, "thinking": short_text, "tool_name": short_text},
    )
    tool = st.fixed_dictionaries(
        {
            "type": st.just("function"),
            "function": st.fixed_dictionaries({"name": st.text(min_size=1, max_size=10)}),
        },
        optional={},
    )
    return st.fixed_dictionaries(
        {
            "model": st.sampled_from([GEMMA, QWEN]),
            "messages": st.lists(message, max_size=3),
            "stream": st.booleans(),
        },
        optional={
            "tools": st.lists(tool, max_size=2),
            "format": st.one_of(st.just("json"), st.just({"type": "object"})),
            "think": st.booleans(),
            "logprobs": st.booleans(),
            "top_logprobs": st.integers(0, 20),
            "tool_choice": st.one_of(
                st.sampled_from(["auto", "none", "required", "any", "sometimes"]),
                st.fixed_dictionaries(
                    {
                        "type": st.sampled_from(["function", "tool", "any", "mcp"]),
                        "name": st.text(min_size=1, max_size=10),
                    }
                ),
            ),
        },
    ).map(lambda body: {**body, "options": cheap_options})


def openai_chat_bodies() -> st.SearchStrategy[dict[str, Any]]:
    message = st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "assistant", "system", "developer"])},
        optional={
            "content": st.one_of(
                short_text,
                st.lists(
                    st.fixed_dictionaries({"type": st.just("text"), "text": short_text}), max_size=2
                ),
            )
        },
    )
    return st.fixed_dictionaries(
        {
            "model": st.sampled_from([GEMMA, QWEN]),
            "messages": st.lists(message, min_size=1, max_size=3),
            "stream": st.booleans(),
        },
        optional={
            "stop": st.one_of(short_text, st.lists(short_text, max_size=3)),
            "seed": st.one_of(st.integers(), huge_ints),
            "temperature": st.floats(-10, 10),
            "top_p": st.floats(-1, 2),
            "frequency_penalty": st.floats(-5, 5),
            "presence_penalty": st.floats(-5, 5),
            "response_format": st.sampled_from([{"type": "text"}, {"type": "json_object"}]),
            "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}),
            "logprobs": st.booleans(),
            "n": st.sampled_from([1, 1, 1, 0, 2]),
        },
    ).map(lambda body: {**body, "max_tokens": 1, "options": cheap_options})


def openai_completion_bodies() -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {
            "model": st.just(GEMMA),
            "prompt": st.one_of(short_text, short_text, st.lists(short_text, max_size=2)),
        },
        optional={
            "suffix": short_text,
            "stream": st.booleans(),
            "echo": st.booleans(),
            "logprobs": st.integers(-1, 6),
            "stop": st.one_of(short_text, st.lists(short_text, max_size=3)),
            "seed": st.integers(),
            "temperature": st.floats(0, 3),
        },
    ).map(lambda body: {**body, "max_tokens": 1, "options": cheap_options})


def embed_bodies() -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {"model": st.just(MINILM)},
        optional={
            "input": st.one_of(
                short_text, st.lists(short_text, max_size=3), st.text(max_size=2000)
            ),
            "truncate": st.booleans(),
            "dimensions": st.one_of(st.integers(1, 384), st.integers(-2, 500), huge_ints),
        },
    )


def anthropic_bodies() -> st.SearchStrategy[dict[str, Any]]:
    block = st.one_of(
        st.fixed_dictionaries({"type": st.just("text"), "text": short_text}),
        st.fixed_dictionaries(
            {"type": st.just("tool_result"), "tool_use_id": short_text, "content": short_text}
        ),
        st.fixed_dictionaries(
            {
                "type": st.just("tool_use"),
                "id": short_text,
                "name": short_text,
                "input": json_values,
            }
        ),
        st.fixed_dictionaries({"type": st.just("thinking"), "thinking": short_text}),
    )
    message = st.fixed_dictionaries(
        {
            "role": st.sampled_from(["user", "assistant", "system"]),
            "content": st.one_of(short_text, st.lists(block, max_size=3)),
        }
    )
    tool = st.fixed_dictionaries(
        {"name": st.text(min_size=1, max_size=10)},
        optional={"input_schema": st.just({"type": "object"}), "type": st.just("bash_20250124")},
    )
    return st.fixed_dictionaries(
        {
            "model": st.sampled_from([GEMMA, QWEN]),
            "messages": st.lists(message, max_size=3),
            "stream": st.booleans(),
        },
        optional={
            "system": st.one_of(short_text, st.lists(block, max_size=2)),
            "stop_sequences": st.lists(short_text, max_size=2),
            "tools": st.lists(tool, max_size=2),
            "tool_choice": st.fixed_dictionaries(
                {
                    "type": st.sampled_from(["auto", "any", "tool", "none"]),
                    "name": st.text(min_size=1, max_size=10),
                }
            ),
            "thinking": st.fixed_dictionaries(
                {"type": st.sampled_from(["enabled", "disabled"]), "budget_tokens": st.integers()}
            ),
            "temperature": st.floats(0, 2),
        },
    ).map(lambda body: {**body, "max_tokens": 1})


def responses_bodies() -> st.SearchStrategy[dict[str, Any]]:
    item = st.one_of(
        st.fixed_dictionaries(
            {"role": st.sampled_from(["user", "developer", "assistant"]), "content": short_text}
        ),
        st.fixed_dictionaries(
            {
                "type": st.just("function_call"),
                "call_id": short_text,
                "name": short_text,
                "arguments": st.one_of(short_text, st.just('{"a": 1}')),
            }
        ),
        st.fixed_dictionaries(
            {"type": st.just("function_call_output"), "call_id": short_text, "output": short_text}
        ),
    )
    tool = st.fixed_dictionaries(
        {"type": st.just("function"), "name": st.text(min_size=1, max_size=10)},
        optional={"parameters": st.just({"type": "object"})},
    )
    return st.fixed_dictionaries(
        {
            "model": st.sampled_from([GEMMA, QWEN]),
            "input": st.one_of(short_text, st.lists(item, max_size=3)),
            "stream": st.booleans(),
        },
        optional={
            "instructions": short_text,
            "tools": st.lists(tool, max_size=2),
            "tool_choice": st.sampled_from(["auto", "none", "required"]),
            "text": st.sampled_from([{"format": {"type": "json_object"}}, {"format": {}}]),
            "reasoning": st.fixed_dictionaries({"effort": st.sampled_from(["none", "low", "x"])}),
        },
    ).map(lambda body: {**body, "max_output_tokens": 1})


REAL_MODEL_CASES = [
    ("/api/generate", generate_bodies, False),
    ("/api/chat", chat_bodies, False),
    ("/api/embed", embed_bodies, False),
    ("/v1/chat/completions", openai_chat_bodies, True),
    ("/v1/completions", openai_completion_bodies, True),
    ("/v1/embeddings", embed_bodies, True),
    ("/v1/messages", anthropic_bodies, True),
    ("/v1/responses", responses_bodies, True),
]


@pytest.mark.slow
@pytest.mark.parametrize(("route", "make_bodies", "openai"), REAL_MODEL_CASES)
def test_real_models_with_odd_but_typed_bodies(
    http: httpx.Client, route: str, make_bodies: Any, openai: bool
):
    @REAL_MODEL_SETTINGS
    @given(body=make_bodies())
    def fuzz(body: dict[str, Any]) -> None:
        # json.dumps, not httpx's json=: a schema in `format` may hold NaN/Infinity, which
        # httpx refuses to encode and the server must take (as the bodies above do)
        content = json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        check_answer(http.post(route, content=content, headers=headers), openai=openai)

    fuzz()
    health = http.get("/health").json()
    assert all(m["active_sequences"] == 0 for m in health["loaded_models"]), health
    assert_still_running(http)
