"""Model output → (thinking, content, tool calls), chunk by chunk, for every API style.

`OutputShaper` chains the streaming parsers of this package: `thinking.ThinkingParser` first
(when thinking was asked for), then `toolcalls.ToolCallParser` on what is content (when the
request offered tools). Text a parser still holds back is released by `feed(..., final=True)`.
"""

from __future__ import annotations

from power.messages import Tool, ToolCall
from power.prompt.thinking import ThinkingParser
from power.prompt.toolcalls import ToolCallParser


class OutputShaper:
    """Turns engine text into (thinking, content, tool calls) with the streaming parsers."""

    def __init__(
        self, *, think: bool, tools: list[Tool], template_hint: str | None, prompt: str
    ) -> None:
        self.thinking = None
        if think:
            starts = prompt.rstrip().endswith("<think>")
            self.thinking = ThinkingParser(starts_in_thinking=starts)
        self.tools = (
            ToolCallParser([t.function.name for t in tools], template_hint) if tools else None
        )

    def feed(self, text: str, final: bool = False) -> tuple[str, str, list[ToolCall]]:
        thinking, content = "", text
        if self.thinking is not None:
            thinking, content = self.thinking.feed(text)
            if final:
                more_thinking, more_content = self.thinking.finish()
                thinking += more_thinking
                content += more_content
        calls: list[ToolCall] = []
        if self.tools is not None:
            content, calls = self.tools.feed(content)
            if final:
                more, more_calls = self.tools.finish()
                content += more
                calls += more_calls
        return thinking, content, calls
