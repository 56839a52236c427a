"""Separating a reasoning model's thinking from its answer, chunk by chunk.

`ThinkingParser.feed(text)` takes generated text in any pieces and returns what is now known to
be thinking and what is now known to be content; text that might still be part of a tag is held
back until the next `feed` or `finish`. The result does not depend on how the text was split.

State diagram (each arrow is taken as soon as the held text decides it):

    LOOKING_FOR_OPEN --open tag after optional whitespace--> THINKING_START
    LOOKING_FOR_OPEN --anything else-----------------------> CONTENT
    THINKING_START   --whitespace (dropped), a repeated open tag (dropped)--> THINKING_START
    THINKING_START   --other text-------------------------> THINKING
    THINKING         --close tag--------------------------> AFTER_CLOSE
    AFTER_CLOSE      --whitespace (dropped), `content_prefix` (dropped)--> AFTER_CLOSE
    AFTER_CLOSE      --other text-------------------------> CONTENT

Whitespace right after the open tag, right before the close tag and right after the close tag
is dropped (Ollama keeps the whitespace before the close tag; power trims it). A model whose
template already opens the thinking block in the prompt (DeepSeek-R1 style `<think>\\n` at the
end of the prompt) is handled with `starts_in_thinking=True`; a repeated open tag at the start
is then tolerated. Text before the first open tag that is not whitespace means the model did not
think: everything is content. A close tag with no open tag (and `starts_in_thinking` False) is
content: deciding otherwise would mean holding the whole answer back.

`harmony()` builds a parser for gpt-oss's channel markers when they reach the text (they are
special tokens; they appear only if the engine renders special tokens): the `analysis` channel is
thinking, the `final` channel is content. Tool calls in the `commentary` channel are not parsed.
"""

from __future__ import annotations

import enum


class ThinkingState(enum.Enum):
    LOOKING_FOR_OPEN = enum.auto()
    THINKING_START = enum.auto()
    THINKING = enum.auto()
    AFTER_CLOSE = enum.auto()
    CONTENT = enum.auto()


def suffix_overlap(text: str, tag: str) -> int:
    """Length of the longest proper prefix of `tag` that `text` ends with."""
    for length in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:length]):
            return length
    return 0


class ThinkingParser:
    """Splits generated text into (thinking, content); see the module docstring."""

    def __init__(
        self,
        open_tag: str = "<think>",
        close_tag: str = "</think>",
        starts_in_thinking: bool = False,
        content_prefix: str = "",
    ) -> None:
        if not open_tag or not close_tag:
            raise ValueError("open_tag and close_tag must not be empty")
        self.open_tag = open_tag
        self.close_tag = close_tag
        self.content_prefix = content_prefix
        self.state = (
            ThinkingState.THINKING_START if starts_in_thinking else ThinkingState.LOOKING_FOR_OPEN
        )
        self._held = ""

    @classmethod
    def harmony(cls) -> ThinkingParser:
        """gpt-oss (harmony format) channel markers, when rendered into the text."""
        return cls(
            open_tag="<|channel|>analysis<|message|>",
            close_tag="<|end|>",
            content_prefix="<|start|>assistant<|channel|>final<|message|>",
        )

    def feed(self, text: str) -> tuple[str, str]:
        """Add generated text; return (thinking, content) decided so far."""
        self._held += text
        thinking: list[str] = []
        content: list[str] = []
        while self._step(thinking, content):
            pass
        return "".join(thinking), "".join(content)

    def finish(self) -> tuple[str, str]:
        """End of generation: release held text (an unclosed thinking block stays thinking)."""
        held, self._held = self._held, ""
        if self.state is ThinkingState.LOOKING_FOR_OPEN:
            self.state = ThinkingState.CONTENT
            return "", held
        if self.state is ThinkingState.THINKING:
            return held, ""
        if self.state is ThinkingState.CONTENT:
            return "", held
        # THINKING_START or AFTER_CLOSE: what is held is whitespace or a partial tag/prefix.
        stripped = held.lstrip()
        if self.state is ThinkingState.AFTER_CLOSE:
            self.state = ThinkingState.CONTENT
            return "", "" if self.content_prefix.startswith(stripped) else stripped
        return "" if self.open_tag.startswith(stripped) else stripped, ""

    # ------------------------------------------------------------------ internals

    def _step(self, thinking: list[str], content: list[str]) -> bool:
        """Advance once over the held text; True if another step may make progress."""
        held = self._held
        if not held:
            return False
        state = self.state
        if state is ThinkingState.CONTENT:
            content.append(held)
            self._held = ""
            return False
        if state is ThinkingState.LOOKING_FOR_OPEN:
            stripped = held.lstrip()
            if stripped.startswith(self.open_tag):
                self._held = stripped[len(self.open_tag) :]
                self.state = ThinkingState.THINKING_START
                return True
            if self.open_tag.startswith(stripped):
                return False  # whitespace or a partial open tag: wait
            self.state = ThinkingState.CONTENT
            return True
        if state in (ThinkingState.THINKING_START, ThinkingState.AFTER_CLOSE):
            marker = self.open_tag if state is ThinkingState.THINKING_START else self.content_prefix
            stripped = held.lstrip()
            self._held = stripped
            if not stripped:
                return False
            if marker and stripped.startswith(marker):
                self._held = stripped[len(marker) :]
                return True
            if marker and marker.startswith(stripped):
                return False
            self.state = (
                ThinkingState.THINKING
                if state is ThinkingState.THINKING_START
                else ThinkingState.CONTENT
            )
            return True
        # THINKING
        index = held.find(self.close_tag)
        if index >= 0:
            thinking.append(held[:index].rstrip())
            self._held = held[index + len(self.close_tag) :]
            self.state = ThinkingState.AFTER_CLOSE
            return True
        keep = suffix_overlap(held, self.close_tag)
        body = held[: len(held) - keep]
        release = body.rstrip()  # trailing whitespace may precede the close tag
        thinking.append(release)
        self._held = held[len(release) :]
        return False
