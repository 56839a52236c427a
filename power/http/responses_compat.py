"""OpenAI's Responses API as pure translations to and from the native chat API.

Requests: `chat_request_from_responses` turns a parsed `ResponsesRequest`
(`responses_schemas`) into a native `ChatRequest`: `instructions` become the first (system)
message, `max_output_tokens` is `num_predict`, `temperature`/`top_p` are options over power's
`options` extension, `text.format` is `format`; tools, `tool_choice` (with
`parallel_tool_calls: false`, one call at most) and thinking go through to `jobs.chat_job`.

Answers take native chat chunks (see `openai_compat`). `response_object` builds the non-streamed
`response`: `output` holds a `reasoning` item (the thinking, as a summary, as Ollama does), a
`message` item with one `output_text` part (always, unless the answer is only tool calls), and
a `function_call` item per call (`call_id`, `name`, `arguments` as a JSON string). `status` is
`completed`, or `incomplete` with `incomplete_details.reason = "max_output_tokens"` when
generation stopped on its length. The request's settings are echoed as the API does.

`ResponseStream` turns a stream of native chunks into the Responses events, each with the
`type` and a `sequence_number` counting from 0:

    response.created, response.in_progress
    per output item, in order:
      response.output_item.added
      reasoning: response.reasoning_summary_part.added, response.reasoning_summary_text.delta*,
                 response.reasoning_summary_text.done, response.reasoning_summary_part.done
      message:   response.content_part.added, response.output_text.delta*,
                 response.output_text.done, response.content_part.done
      function_call: response.function_call_arguments.delta (the whole arguments: the parser
                 yields complete calls), response.function_call_arguments.done
      response.output_item.done
    response.completed (or response.incomplete), with the whole response and its usage

An error once streaming is a `response.failed` event whose response carries the error.
"""

from __future__ import annotations

import enum
import secrets
import time
from typing import Any

from power.http.openai_compat import unix_time
from power.http.responses_schemas import ResponsesRequest, native_format
from power.http.schemas import ChatRequest
from power.http.streaming import dumps
from power.messages import Message, ToolChoice, ToolChoiceMode
from power.options import parse_options

# ---------------------------------------------------------------- requests


def chat_request_from_responses(req: ResponsesRequest) -> ChatRequest:
    """The native chat request equivalent to a validated Responses request."""
    options = dict(req.options)
    standard = {
        "num_predict": req.max_output_tokens,
        "temperature": req.temperature,
        "top_p": req.top_p,
    }
    options.update(parse_options({k: v for k, v in standard.items() if v is not None}))
    system = [Message(role="system", content=req.instructions)] if req.instructions else []
    choice = req.tool_choice
    return ChatRequest(
        model=req.model,
        messages=system + list(req.input),
        tools=req.tools,
        tool_choice=ToolChoice(
            choice.mode, name=choice.name, parallel=choice.parallel and req.parallel_tool_calls
        ),
        format=native_format(req.text_format),
        stream=req.stream,
        keep_alive=req.keep_alive,
        options=options,
        think=req.think,
    )


def tool_choice_json(choice: ToolChoice) -> str | dict[str, Any]:
    """A tool choice as the Responses API spells it."""
    if choice.mode is ToolChoiceMode.TOOL:
        return {"type": "function", "name": choice.name}
    return choice.mode.value


def request_echo(req: ResponsesRequest) -> dict[str, Any]:
    """The request settings a response object repeats."""
    return {
        "instructions": req.instructions or None,
        "max_output_tokens": req.max_output_tokens,
        "metadata": dict(req.metadata),
        "parallel_tool_calls": req.parallel_tool_calls,
        "reasoning": {"effort": req.reasoning_effort, "summary": None},
        "temperature": req.temperature,  # None: the model's own (power forces no default)
        "text": {"format": req.text_format},
        "tool_choice": tool_choice_json(req.tool_choice),
        "tools": [
            {
                "type": "function",
                "name": tool.function.name,
                "description": tool.function.description or None,
                "parameters": tool.function.parameters,
                "strict": False,
            }
            for tool in req.tools
        ],
        "top_p": req.top_p,
    }


# ---------------------------------------------------------------- answers


def new_id(prefix: str) -> str:
    """`resp_`, `msg_`, `rs_` or `fc_` and 32 hex digits."""
    return f"{prefix}_{secrets.token_hex(16)}"


def responses_usage(native: dict[str, Any]) -> dict[str, Any]:
    n_input = int(native.get("prompt_eval_count") or 0)
    n_output = int(native.get("eval_count") or 0)
    return {
        "input_tokens": n_input,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": n_output,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": n_input + n_output,
    }


def response_object(
    *,
    response_id: str,
    created_at: int,
    model: str,
    status: str,
    output: list[dict[str, Any]],
    echo: dict[str, Any],
    usage: dict[str, Any] | None = None,
    error: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A `response` object; `status` is in_progress, completed, incomplete or failed."""
    return {
        "id": response_id,
        "object": "response",
        "created_at": created_at,
        "status": status,
        "error": error,
        "incomplete_details": ({"reason": "max_output_tokens"} if status == "incomplete" else None),
        "model": model,
        "output": output,
        "previous_response_id": None,
        "store": False,
        "background": False,
        "truncation": "disabled",
        "service_tier": "default",
        "usage": usage,
        **echo,
    }


def reasoning_item(item_id: str, thinking: str) -> dict[str, Any]:
    summary = [{"type": "summary_text", "text": thinking}] if thinking else []
    return {"type": "reasoning", "id": item_id, "summary": summary, "status": "completed"}


def message_item(item_id: str, text: str, status: str = "completed") -> dict[str, Any]:
    return {
        "type": "message",
        "id": item_id,
        "status": status,
        "role": "assistant",
        "content": [_text_part(text)] if status != "in_progress" else [],
    }


def function_call_item(item_id: str, call: dict[str, Any], status: str = "completed") -> dict:
    function = call.get("function") or {}
    return {
        "type": "function_call",
        "id": item_id,
        "call_id": call.get("id", ""),
        "name": function.get("name", ""),
        "arguments": dumps(function.get("arguments") or {}) if status == "completed" else "",
        "status": status,
    }


def _text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _status(native: dict[str, Any]) -> str:
    return "incomplete" if native.get("done_reason") == "length" else "completed"


def responses_answer(
    native: dict[str, Any], *, response_id: str, echo: dict[str, Any]
) -> dict[str, Any]:
    """The non-streamed `response` for a native (merged) chat answer."""
    message = native.get("message") or {}
    output: list[dict[str, Any]] = []
    if message.get("thinking"):
        output.append(reasoning_item(new_id("rs"), message["thinking"]))
    calls = message.get("tool_calls") or []
    status = _status(native)
    if message.get("content") or not calls:
        item_status = "incomplete" if status == "incomplete" else "completed"
        output.append(message_item(new_id("msg"), message.get("content") or "", item_status))
    output += [function_call_item(new_id("fc"), call) for call in calls]
    return response_object(
        response_id=response_id,
        created_at=unix_time(native.get("created_at")),
        model=native.get("model", ""),
        status=status,
        output=output,
        echo=echo,
        usage=responses_usage(native),
    )


class ItemKind(enum.Enum):
    NONE = enum.auto()
    REASONING = enum.auto()
    MESSAGE = enum.auto()


Event = tuple[str, dict[str, Any]]


class ResponseStream:
    """Turns native chat chunks into Responses stream events `(type, data)`, in order (see the
    module docstring). One item is open at a time: reasoning or message take deltas until an
    item of another kind, a tool call or the end closes them."""

    def __init__(self, model: str, *, echo: dict[str, Any], response_id: str | None = None) -> None:
        self.model = model
        self.echo = echo
        self.id = response_id or new_id("resp")
        self.created_at = int(time.time())
        self.sequence_number = 0
        self.started = False
        self.finished = False
        self.output: list[dict[str, Any]] = []  # completed items, in output order
        self.open = ItemKind.NONE
        self.open_id = ""
        self.open_text = ""

    def translate(self, native: dict[str, Any]) -> list[Event]:
        events: list[Event] = []
        if not self.started:
            self.started = True
            for kind in ("response.created", "response.in_progress"):
                events.append(self._event(kind, response=self._response("in_progress")))
        message = native.get("message") or {}
        if message.get("thinking"):
            events += self._text(ItemKind.REASONING, message["thinking"])
        if message.get("content"):
            events += self._text(ItemKind.MESSAGE, message["content"])
        for call in message.get("tool_calls") or []:
            events += self._function_call(call)
        if native.get("done") and not self.finished:
            self.finished = True
            status = _status(native)
            if not self.output and self.open is ItemKind.NONE:
                events += self._text(ItemKind.MESSAGE, "")  # an answer has a message
            events += self._close("incomplete" if status == "incomplete" else "completed")
            response = self._response(status, usage=responses_usage(native))
            events.append(self._event(f"response.{status}", response=response))
        return events

    def failed(self, status: int, message: str) -> list[Event]:
        """The events that end a stream that failed after it started."""
        self.finished = True
        code = "server_error" if status >= 500 else "invalid_request"
        response = self._response("failed", error={"code": code, "message": message})
        return [self._event("response.failed", response=response)]

    # ------------------------------------------------------------------ internals

    def _event(self, kind: str, **data: Any) -> Event:
        event = {"type": kind, "sequence_number": self.sequence_number, **data}
        self.sequence_number += 1
        return kind, event

    def _response(self, status: str, **more: Any) -> dict[str, Any]:
        output = list(self.output) if status != "in_progress" else []
        return response_object(
            response_id=self.id,
            created_at=self.created_at,
            model=self.model,
            status=status,
            output=output,
            echo=self.echo,
            **more,
        )

    def _added(self, item: dict[str, Any]) -> Event:
        return self._event("response.output_item.added", output_index=len(self.output), item=item)

    def _done(self, item: dict[str, Any]) -> Event:
        event = self._event("response.output_item.done", output_index=len(self.output), item=item)
        self.output.append(item)
        return event

    def _text(self, kind: ItemKind, text: str) -> list[Event]:
        events: list[Event] = self._close() if self.open is not kind else []
        index = len(self.output)
        if self.open is not kind:
            self.open, self.open_text = kind, ""
            if kind is ItemKind.REASONING:
                self.open_id = new_id("rs")
                item = {"type": "reasoning", "id": self.open_id, "summary": []}
                events.append(self._added(item))
                events.append(self._summary_part("added", ""))
            else:
                self.open_id = new_id("msg")
                events.append(self._added(message_item(self.open_id, "", "in_progress")))
                events.append(
                    self._event(
                        "response.content_part.added",
                        item_id=self.open_id,
                        output_index=index,
                        content_index=0,
                        part=_text_part(""),
                    )
                )
        self.open_text += text
        if not text:
            return events
        if kind is ItemKind.REASONING:
            events.append(
                self._event(
                    "response.reasoning_summary_text.delta",
                    item_id=self.open_id,
                    output_index=index,
                    summary_index=0,
                    delta=text,
                )
            )
        else:
            events.append(
                self._event(
                    "response.output_text.delta",
                    item_id=self.open_id,
                    output_index=index,
                    content_index=0,
                    delta=text,
                    logprobs=[],
                )
            )
        return events

    def _summary_part(self, stage: str, text: str) -> Event:
        return self._event(
            f"response.reasoning_summary_part.{stage}",
            item_id=self.open_id,
            output_index=len(self.output),
            summary_index=0,
            part={"type": "summary_text", "text": text},
        )

    def _close(self, status: str = "completed") -> list[Event]:
        """The events that finish the open item (none when no item is open)."""
        kind, text, item_id, index = self.open, self.open_text, self.open_id, len(self.output)
        self.open = ItemKind.NONE
        if kind is ItemKind.REASONING:
            return [
                self._event(
                    "response.reasoning_summary_text.done",
                    item_id=item_id,
                    output_index=index,
                    summary_index=0,
                    text=text,
                ),
                self._summary_part("done", text),
                self._done(reasoning_item(item_id, text)),
            ]
        if kind is ItemKind.MESSAGE:
            location = {"item_id": item_id, "output_index": index, "content_index": 0}
            return [
                self._event("response.output_text.done", **location, text=text, logprobs=[]),
                self._event("response.content_part.done", **location, part=_text_part(text)),
                self._done(message_item(item_id, text, status)),
            ]
        return []

    def _function_call(self, call: dict[str, Any]) -> list[Event]:
        events = self._close()
        item_id = new_id("fc")
        done = function_call_item(item_id, call)
        index = len(self.output)
        location = {"item_id": item_id, "output_index": index}
        events.append(self._added(function_call_item(item_id, call, "in_progress")))
        events.append(
            self._event(
                "response.function_call_arguments.delta", **location, delta=done["arguments"]
            )
        )
        events.append(
            self._event(
                "response.function_call_arguments.done",
                **location,
                name=done["name"],
                arguments=done["arguments"],
            )
        )
        events.append(self._done(done))
        return events
