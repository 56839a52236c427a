"""The Anthropic Messages API as pure translations to and from the native chat API.

Requests: `chat_request_from_anthropic` turns a parsed `MessagesRequest` (`anthropic_schemas`)
into a native `ChatRequest`: `system` becomes the first message, `max_tokens` is `num_predict`,
`temperature`/`top_p`/`top_k`/`stop_sequences` are options (over power's `options` extension),
`tools`, `tool_choice` and thinking go through, so `jobs.chat_job` runs it as any chat.
`count_request_from_anthropic` does the same for `/v1/messages/count_tokens`.

Answers take native chat chunks (see `openai_compat`), whose final one may carry
`stop_sequence` (the stop string that ended the generation). `anthropic_message` builds the
non-streamed `message`; `MessageStream` turns a stream of native chunks into Anthropic's events,
in Anthropic's order:

    message_start
    (content_block_start, [ping once, after the first block start],
     content_block_delta*, content_block_stop)*      thinking, text, tool_use blocks in order
    message_delta (stop_reason, stop_sequence, usage)
    message_stop

Thinking and text stream as `thinking_delta` / `text_delta`; a tool call arrives whole from the
parser, so its block is `content_block_start` (empty `input`), one `input_json_delta` with the
arguments' JSON, `content_block_stop`. `message_start` carries the usage known then (input
tokens only when the first chunk is also the last); `message_delta` carries both counts.

Stop reasons: a tool call → `tool_use`; `length` → `max_tokens`; a stop string →
`stop_sequence` (and `stop_sequence` set); otherwise `end_turn`. Errors: Anthropic's body
`{"type": "error", "error": {"type", "message"}}`, the type chosen from the status as Ollama
chooses it; mid-stream, one `error` event.
"""

from __future__ import annotations

import enum
import secrets
from typing import Any

from power.http.anthropic_schemas import CountTokensRequest, MessagesRequest
from power.http.schemas import ChatRequest
from power.http.streaming import dumps
from power.messages import Message
from power.options import parse_options

# ---------------------------------------------------------------- requests


def _conversation(req: CountTokensRequest) -> list[Message]:
    system = [Message(role="system", content=req.system)] if req.system else []
    return system + list(req.messages)


def chat_request_from_anthropic(req: MessagesRequest) -> ChatRequest:
    """The native chat request equivalent to a validated Anthropic messages request."""
    options = dict(req.options)
    standard = {
        "num_predict": req.max_tokens,
        "temperature": req.temperature,
        "top_p": req.top_p,
        "top_k": req.top_k,
        "stop": req.stop_sequences or None,
    }
    options.update(parse_options({k: v for k, v in standard.items() if v is not None}))
    return ChatRequest(
        model=req.model,
        messages=_conversation(req),
        tools=req.tools,
        tool_choice=req.tool_choice,
        stream=req.stream,
        keep_alive=req.keep_alive,
        options=options,
        think=req.think,
    )


def count_request_from_anthropic(req: CountTokensRequest) -> ChatRequest:
    """The native chat request whose prompt `/v1/messages/count_tokens` measures."""
    return ChatRequest(
        model=req.model,
        messages=_conversation(req),
        tools=req.tools,
        tool_choice=req.tool_choice,
        keep_alive=req.keep_alive,
        options=dict(req.options),
        think=req.think,
    )


# ---------------------------------------------------------------- answers


def new_message_id() -> str:
    """`msg_` and 24 hex digits."""
    return "msg_" + secrets.token_hex(12)


def stop_reason(native: dict[str, Any], used_tools: bool) -> str:
    """end_turn | max_tokens | stop_sequence | tool_use, from a native final chunk."""
    if used_tools:
        return "tool_use"
    if native.get("done_reason") == "length":
        return "max_tokens"
    if native.get("stop_sequence"):
        return "stop_sequence"
    return "end_turn"


def anthropic_usage(native: dict[str, Any]) -> dict[str, int]:
    return {
        "input_tokens": int(native.get("prompt_eval_count") or 0),
        "output_tokens": int(native.get("eval_count") or 0),
    }


def tool_use_block(call: dict[str, Any]) -> dict[str, Any]:
    """A native tool call (JSON form) as a `tool_use` content block."""
    function = call.get("function") or {}
    return {
        "type": "tool_use",
        "id": call.get("id", ""),
        "name": function.get("name", ""),
        "input": function.get("arguments") or {},
    }


def anthropic_message(native: dict[str, Any], *, message_id: str | None = None) -> dict[str, Any]:
    """The non-streamed `message` for a native (merged) chat answer."""
    message = native.get("message") or {}
    content: list[dict[str, Any]] = []
    if message.get("thinking"):
        content.append({"type": "thinking", "thinking": message["thinking"], "signature": ""})
    if message.get("content"):
        content.append({"type": "text", "text": message["content"]})
    calls = message.get("tool_calls") or []
    content += [tool_use_block(call) for call in calls]
    reason = stop_reason(native, bool(calls))
    return {
        "id": message_id or new_message_id(),
        "type": "message",
        "role": "assistant",
        "model": native.get("model", ""),
        "content": content,
        "stop_reason": reason,
        "stop_sequence": native.get("stop_sequence") if reason == "stop_sequence" else None,
        "usage": anthropic_usage(native),
    }


class BlockKind(enum.Enum):
    NONE = enum.auto()
    THINKING = enum.auto()
    TEXT = enum.auto()


Event = tuple[str, dict[str, Any]]


class MessageStream:
    """Turns native chat chunks into Anthropic stream events `(name, data)`, in order (see the
    module docstring). `open_block` is the block that takes deltas now (thinking or text);
    a tool call, a block of the other kind or the end closes it."""

    def __init__(self, model: str, *, message_id: str | None = None) -> None:
        self.model = model
        self.id = message_id or new_message_id()
        self.started = False
        self.finished = False
        self.sent_ping = False
        self.used_tools = False
        self.open_block = BlockKind.NONE
        self.n_blocks = 0  # blocks started so far; the open one is n_blocks - 1

    def translate(self, native: dict[str, Any]) -> list[Event]:
        events: list[Event] = []
        if not self.started:
            self.started = True
            events.append(self._message_start(native))
        if "error" in native:
            return events + [error_event(int(native.get("status") or 500), str(native["error"]))]
        message = native.get("message") or {}
        if message.get("thinking"):
            events += self._delta(BlockKind.THINKING, message["thinking"])
        if message.get("content"):
            events += self._delta(BlockKind.TEXT, message["content"])
        for call in message.get("tool_calls") or []:
            events += self._tool_use(call)
        if native.get("done") and not self.finished:
            self.finished = True
            events += self._close()
            if not self.sent_ping:
                self.sent_ping = True
                events.append(("ping", {"type": "ping"}))
            reason = stop_reason(native, self.used_tools)
            stop = native.get("stop_sequence") if reason == "stop_sequence" else None
            events.append(
                (
                    "message_delta",
                    {
                        "type": "message_delta",
                        "delta": {"stop_reason": reason, "stop_sequence": stop},
                        "usage": anthropic_usage(native),
                    },
                )
            )
            events.append(("message_stop", {"type": "message_stop"}))
        return events

    def _message_start(self, native: dict[str, Any]) -> Event:
        message = {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {
                "input_tokens": int(native.get("prompt_eval_count") or 0),
                "output_tokens": 0,
            },
        }
        return "message_start", {"type": "message_start", "message": message}

    def _start(self, block: dict[str, Any]) -> list[Event]:
        events: list[Event] = [
            (
                "content_block_start",
                {"type": "content_block_start", "index": self.n_blocks, "content_block": block},
            )
        ]
        self.n_blocks += 1
        if not self.sent_ping:
            self.sent_ping = True
            events.append(("ping", {"type": "ping"}))
        return events

    def _close(self) -> list[Event]:
        if self.open_block is BlockKind.NONE:
            return []
        self.open_block = BlockKind.NONE
        return [("content_block_stop", {"type": "content_block_stop", "index": self.n_blocks - 1})]

    def _delta(self, kind: BlockKind, text: str) -> list[Event]:
        events: list[Event] = []
        if self.open_block is not kind:
            events += self._close()
            if kind is BlockKind.THINKING:
                events += self._start({"type": "thinking", "thinking": "", "signature": ""})
            else:
                events += self._start({"type": "text", "text": ""})
            self.open_block = kind
        if kind is BlockKind.THINKING:
            delta = {"type": "thinking_delta", "thinking": text}
        else:
            delta = {"type": "text_delta", "text": text}
        events.append(
            (
                "content_block_delta",
                {"type": "content_block_delta", "index": self.n_blocks - 1, "delta": delta},
            )
        )
        return events

    def _tool_use(self, call: dict[str, Any]) -> list[Event]:
        self.used_tools = True
        block = tool_use_block(call)
        arguments = dumps(block["input"])
        events = self._close() + self._start({**block, "input": {}})
        index = self.n_blocks - 1
        events.append(
            (
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": index,
                    "delta": {"type": "input_json_delta", "partial_json": arguments},
                },
            )
        )
        events.append(("content_block_stop", {"type": "content_block_stop", "index": index}))
        return events


# ---------------------------------------------------------------- errors

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    529: "overloaded_error",
}


def error_type(status: int) -> str:
    if status in _ERROR_TYPES:
        return _ERROR_TYPES[status]
    return "invalid_request_error" if 400 <= status < 500 else "api_error"


def anthropic_error(status: int, message: str) -> dict[str, Any]:
    """Anthropic's error body `{"type": "error", "error": {"type", "message"}}`."""
    return {"type": "error", "error": {"type": error_type(status), "message": message}}


def error_event(status: int, message: str) -> Event:
    """The `error` event that reports a failure once a stream has started."""
    return "error", anthropic_error(status, message)
