"""Ollama parity details against the shared `power serve`: `_debug_info`, `/api/status`, think
values on every route that takes them, unknown options, and chat `truncate`/`shift`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import ollama
import pytest

from conftest import GEMMA, QWEN

pytestmark = pytest.mark.slow

#: A template that shows what reached it: `.IsThinkSet`, `.Think` and `.ThinkLevel` (its
#: <think> tags give the model the thinking capability, as in Ollama).
THINK_TEMPLATE = (
    "{{ if .IsThinkSet }}[think={{ .Think }} level={{ .ThinkLevel }}]\n{{ end }}"
    "{{ range .Messages }}<|im_start|>{{ .Role }}\n"
    "{{ if .Thinking }}<think>{{ .Thinking }}</think>{{ end }}{{ .Content }}<|im_end|>\n{{ end }}"
    "<|im_start|>assistant\n"
)
THINKER = "thinker-parity:latest"


@pytest.fixture(scope="module")
def thinker(server: str) -> Iterator[str]:
    """qwen with a template that uses `.Think` (so the model has the thinking capability)."""
    created = httpx.post(
        server + "/api/create",
        json={"model": THINKER, "from": QWEN, "template": THINK_TEMPLATE, "stream": False},
        timeout=120,
    )
    assert created.status_code == 200, created.text
    yield THINKER
    httpx.request("DELETE", server + "/api/delete", json={"model": THINKER}, timeout=60)


def _post(server: str, path: str, body: dict, **kwargs) -> httpx.Response:
    return httpx.post(server + path, json=body, timeout=600, **kwargs)


# ---------------------------------------------------------------- _debug_info and /api/status


def test_debug_render_only_answers_ollamas_debug_info(server: str) -> None:
    question = "Why is the sky blue?"
    for path, body, expected in (
        ("/api/generate", {"model": GEMMA, "prompt": question}, f"user\n{question}<end_of_turn>"),
        (
            "/api/chat",
            {"model": QWEN, "messages": [{"role": "user", "content": question}]},
            f"<|im_start|>user\n{question}<|im_end|>",
        ),
    ):
        answer = _post(server, path, {**body, "_debug_render_only": True}).json()
        assert answer["done"] is True and "debug" not in answer
        assert list(answer["_debug_info"]) == ["rendered_template"]  # no images: no image_count
        assert expected in answer["_debug_info"]["rendered_template"]


def test_api_status_says_cloud_is_disabled(server: str) -> None:
    answer = httpx.get(server + "/api/status")
    assert answer.status_code == 200
    assert answer.json() == {"cloud": {"disabled": True, "source": "none"}}
    assert httpx.post(server + "/api/status").status_code == 405


# ---------------------------------------------------------------- think


@pytest.mark.parametrize(
    ("think", "shown"),
    [
        (True, "[think=true level=medium]"),
        (False, "[think=false level=]"),
        ("low", "[think=true level=low]"),
        ("medium", "[think=true level=medium]"),
        ("high", "[think=true level=high]"),
        ("max", "[think=true level=max]"),
    ],
)
def test_think_values_reach_the_template(server: str, thinker: str, think, shown: str) -> None:
    for path, body in (
        ("/api/generate", {"model": thinker, "prompt": "Hi"}),
        ("/api/chat", {"model": thinker, "messages": [{"role": "user", "content": "Hi"}]}),
    ):
        answer = _post(server, path, {**body, "think": think, "_debug_render_only": True})
        assert answer.status_code == 200, answer.text
        assert answer.json()["_debug_info"]["rendered_template"].startswith(shown)


@pytest.mark.parametrize("think", ["extreme", "MAX", 1, None])
def test_invalid_think_values_are_a_400(server: str, thinker: str, think) -> None:
    body = {"model": thinker, "messages": [{"role": "user", "content": "Hi"}], "think": think}
    answer = _post(server, "/api/chat", body)
    if think is None:  # null is "not given"
        assert answer.status_code == 200
        return
    assert answer.status_code == 400
    assert "think" in answer.json()["error"]
    generate = _post(server, "/api/generate", {"model": thinker, "prompt": "Hi", "think": think})
    assert generate.status_code == 400


def test_a_think_level_on_a_model_that_cannot_think_is_a_400(server: str) -> None:
    client = ollama.Client(host=server)
    with pytest.raises(ollama.ResponseError) as info:
        client.chat(GEMMA, messages=[{"role": "user", "content": "Hi"}], think="max")
    assert info.value.status_code == 400 and "does not support thinking" in info.value.error


def test_think_levels_on_the_openai_anthropic_and_responses_routes(
    server: str, thinker: str
) -> None:
    user = [{"role": "user", "content": "Hi"}]
    accepted = [
        ("/v1/chat/completions", {"reasoning_effort": effort, "max_tokens": 1})
        for effort in ("none", "minimal", "low", "medium", "high", "xhigh", "ultra", "max")
    ]
    accepted += [
        ("/v1/chat/completions", {"reasoning": {"effort": "max"}, "max_tokens": 1}),
        ("/v1/responses", {"reasoning": {"effort": "max"}, "max_output_tokens": 1}),
        ("/v1/messages", {"thinking": {"type": "enabled", "budget_tokens": 20000}}),
        ("/v1/messages", {"thinking": {"type": "disabled"}}),
        ("/v1/messages", {"output_config": {"effort": "max"}}),
    ]
    for path, extra in accepted:
        body = {"model": thinker, "max_tokens": 1, **extra}
        body["input" if path == "/v1/responses" else "messages"] = user
        if path == "/v1/responses":
            body.pop("max_tokens")
        answer = _post(server, path, body)
        assert answer.status_code == 200, (path, extra, answer.text)
    refused = [
        ("/v1/chat/completions", {"reasoning_effort": "extreme"}, "invalid reasoning effort"),
        ("/v1/responses", {"reasoning": {"effort": "extreme"}}, "invalid reasoning effort"),
        ("/v1/messages", {"output_config": {"effort": "extreme"}}, "effort"),
        ("/v1/messages", {"thinking": {"type": "sometimes"}}, "thinking.type"),
    ]
    for path, extra, words in refused:
        body = {"model": thinker, "max_tokens": 1, **extra}
        body["input" if path == "/v1/responses" else "messages"] = user
        answer = _post(server, path, body)
        assert answer.status_code == 400, (path, extra, answer.text)
        assert words in answer.text


# ---------------------------------------------------------------- options


def _server_log(model_store: Path, server: str) -> str:
    port = server.rsplit(":", 1)[1]
    return (model_store.parent / f"server-{port}.log").read_text(errors="replace")


def test_unknown_options_are_ignored_with_a_warning(server: str, model_store: Path) -> None:
    client = ollama.Client(host=server)
    options = {"num_predict": 1, "temperature": 0, "no_such_option": 5, "draft_num_predict": 4}
    answer = client.generate(GEMMA, "1, 2,", raw=True, options=options)
    assert answer.done and answer.eval_count == 1
    openai = _post(
        server,
        "/v1/chat/completions",
        {
            "model": QWEN,
            "messages": [{"role": "user", "content": "Hi"}],
            "max_tokens": 1,
            "options": {"another_unknown": True},
        },
    )
    assert openai.status_code == 200
    log = _server_log(model_store, server)
    for name in ("no_such_option", "another_unknown"):
        assert f"ignoring unknown option '{name}'" in log
    # draft_num_predict is Ollama's option for speculative decoding: known, so no warning
    assert "ignoring unknown option 'draft_num_predict'" not in log


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"num_predict": "many"}, "must be of type int"),
        ({"temperature": [1]}, "must be of type float"),
        ({"top_p": 1.5}, "top_p"),
        ({"mirostat": 3}, "mirostat"),
        ({"use_mmap": "perhaps"}, "bool"),
    ],
)
def test_a_known_option_of_the_wrong_type_or_range_is_a_400(
    server: str, options: dict, words: str
) -> None:
    client = ollama.Client(host=server)
    with pytest.raises(ollama.ResponseError) as info:
        client.generate(GEMMA, "Hi", options=options)
    assert info.value.status_code == 400 and words in info.value.error


# ---------------------------------------------------------------- chat truncate and shift

FILLER = "The quick brown fox jumps over the lazy dog while the cat sleeps. " * 50
SYSTEM = "You are a helpful assistant. Answer in one short sentence."
QUESTION = "What is the capital of France?"
CONVERSATION = [
    {"role": "system", "content": SYSTEM},
    {"role": "user", "content": FILLER},
    {"role": "assistant", "content": FILLER},
    {"role": "user", "content": QUESTION},
]
SMALL = {"num_ctx": 512, "temperature": 0, "num_predict": 24}


def test_chat_drops_whole_old_messages_keeping_the_system_one(server: str) -> None:
    client = ollama.Client(host=server)
    answer = client.chat(QWEN, messages=CONVERSATION, options=SMALL)
    assert "Paris" in answer.message.content
    # what the model saw is exactly the system message and the question
    counted = _post(
        server,
        "/v1/messages/count_tokens",
        {
            "model": QWEN,
            "system": SYSTEM,
            "messages": [{"role": "user", "content": QUESTION}],
            "options": SMALL,
        },
    ).json()["input_tokens"]
    assert answer.prompt_eval_count == counted
    raw = _post(
        server,
        "/api/chat",
        {"model": QWEN, "messages": CONVERSATION, "options": SMALL, "stream": False},
    ).json()
    assert raw["prompt_truncated"] is True


def test_chat_with_truncate_false_refuses_a_prompt_that_does_not_fit(server: str) -> None:
    body = {"model": QWEN, "messages": CONVERSATION, "options": SMALL, "truncate": False}
    for stream in (False, True):
        answer = _post(server, "/api/chat", {**body, "stream": stream})
        assert answer.status_code == 400
        assert "exceeds the context length" in answer.json()["error"]
    fits = [{"role": "user", "content": QUESTION}]
    answer = _post(server, "/api/chat", {**body, "messages": fits, "stream": False})
    assert answer.status_code == 200 and "prompt_truncated" not in answer.json()


def test_shift_false_stops_at_the_context_with_done_reason_length(server: str) -> None:
    body = {
        "model": GEMMA,
        "prompt": "1, 2, 3, 4, 5, 6,",
        "raw": True,
        "stream": False,
        "options": {"num_ctx": 64, "num_predict": 80, "temperature": 0},
    }
    stopped = _post(server, "/api/generate", {**body, "shift": False}).json()
    assert stopped["done_reason"] == "length"
    # the context holds 64 tokens; the last one generated is sampled from it, never decoded
    assert stopped["prompt_eval_count"] + stopped["eval_count"] == 64 + 1
    shifted = _post(server, "/api/generate", body).json()  # shift defaults to true
    assert shifted["done_reason"] == "length" and shifted["eval_count"] == 80
    chat = _post(
        server,
        "/api/chat",
        {
            "model": QWEN,
            "messages": [
                {
                    "role": "user",
                    "content": "List the numbers from 1 to 100, one per line, nothing else.",
                }
            ],
            "stream": False,
            "shift": False,
            "options": {"num_ctx": 64, "num_predict": 200, "temperature": 0},
        },
    ).json()
    assert chat["done_reason"] == "length"
    assert chat["prompt_eval_count"] + chat["eval_count"] == 64 + 1
