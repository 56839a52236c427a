"""The interactive chat of `power run` (a model and no prompt, on a terminal).

The chat keeps the conversation and sends all of it with each /api/chat request. It reads
lines with `readline` (history in `~/.power/history` unless POWER_NOHISTORY/OLLAMA_NOHISTORY
is set), takes `\"\"\"` multi-line input and the slash commands listed by `/?`. Ctrl+C stops the
answer being written (the response is closed, so the server frees the sequence) and returns to
the prompt; at the prompt it only reminds the user that Ctrl+D or /bye leaves.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import attrs

from power.cli import display
from power.cli.common import err, out
from power.cli.run import THINK_LEVELS, RunSettings, apply_show, chat_once, load_model
from power.client import Client, ResponseError
from power.options import OptionError, coerce_option

# ---------------------------------------------------------------- interactive chat


HELP_TEXT = """\
Available Commands:
  /set            Set session variables
  /show           Show model information
  /load <model>   Load a session or model
  /save <model>   Save your current session
  /clear          Clear session context
  /bye            Exit
  /?, /help       Help for a command
  /? shortcuts    Help for keyboard shortcuts

Use \"\"\" to begin a multi-line message.
"""

SET_HELP = """\
Available Commands:
  /set parameter ...     Set a parameter
  /set system <string>   Set system message
  /set history           Enable history
  /set nohistory         Disable history
  /set wordwrap          Enable wordwrap
  /set nowordwrap        Disable wordwrap
  /set format json       Enable JSON mode
  /set noformat          Disable formatting
  /set verbose           Show LLM stats
  /set quiet             Disable LLM stats
  /set think             Enable thinking
  /set nothink           Disable thinking
"""

SHOW_HELP = """\
Available Commands:
  /show info         Show details for this model
  /show license      Show model license
  /show modelfile    Show Modelfile for this model
  /show parameters   Show parameters for this model
  /show system       Show system message
  /show template     Show prompt template
"""

PARAMETER_HELP = """\
Available Parameters:
  /set parameter seed <int>             Random number seed
  /set parameter num_predict <int>      Max number of tokens to predict
  /set parameter top_k <int>            Pick from top k num of tokens
  /set parameter top_p <float>          Pick token based on sum of probabilities
  /set parameter min_p <float>          Pick token based on top token probability * min_p
  /set parameter num_ctx <int>          Set the context size
  /set parameter temperature <float>    Set creativity level
  /set parameter repeat_penalty <float> How strongly to penalize repetitions
  /set parameter repeat_last_n <int>    Set how far back to look for repetitions
  /set parameter num_gpu <int>          The number of layers to send to the GPU
  /set parameter stop <string> <string> ...   Set the stop parameters
"""

SHORTCUTS_HELP = """\
Available keyboard shortcuts:
  Ctrl + a            Move to the beginning of the line (Home)
  Ctrl + e            Move to the end of the line (End)
   Alt + b            Move back (left) one word
   Alt + f            Move forward (right) one word
  Ctrl + k            Delete the sentence after the cursor
  Ctrl + u            Delete the sentence before the cursor
  Ctrl + w            Delete the word before the cursor

  Ctrl + l            Clear the screen
  Ctrl + c            Stop the model from responding
  Ctrl + d            Exit power (/bye)
"""


def _history_file() -> Path | None:
    if os.environ.get("POWER_NOHISTORY") or os.environ.get("OLLAMA_NOHISTORY"):
        return None
    return Path.home() / ".power" / "history"


class LineReader:
    """`input()` with readline editing and a history file (when readline is available)."""

    def __init__(self) -> None:
        try:
            import readline
        except ImportError:  # pragma: no cover - platforms without readline
            readline = None
        self.readline = readline
        self.history_path = _history_file()
        self.history_enabled = self.history_path is not None
        if readline and self.history_path and self.history_path.exists():
            with contextlib.suppress(OSError):
                readline.read_history_file(self.history_path)

    def read(self, prompt: str) -> str:
        line = input(prompt)
        if self.readline and self.history_enabled and line.strip() and self.history_path:
            with contextlib.suppress(OSError):
                self.history_path.parent.mkdir(parents=True, exist_ok=True)
                self.history_path.touch()  # readline appends only to an existing file
                self.readline.append_history_file(1, self.history_path)
        elif self.readline and not self.history_enabled and line.strip():
            length = self.readline.get_current_history_length()
            if length:
                self.readline.remove_history_item(length - 1)
        return line

    def set_history(self, enabled: bool) -> None:
        self.history_enabled = enabled
        if enabled and self.history_path is None:
            self.history_path = Path.home() / ".power" / "history"


class ChatSession:
    """The read-eval-print loop of `power run` without a prompt."""

    def __init__(
        self, client: Client, settings: RunSettings, reader: LineReader | None = None
    ) -> None:
        self.client = client
        self.settings = settings
        self.reader = reader or LineReader()
        self.buffer: list[str] = []
        self.multiline: str | None = None  # None, "prompt" or "system"

    def loop(self) -> int:
        if threading.current_thread() is threading.main_thread():
            # Ctrl+C stops an answer or reminds how to leave, even when this process was
            # started with SIGINT ignored (a parent that ignores it passes that on, and Python
            # then leaves it ignored: Ctrl+C would do nothing at all)
            signal.signal(signal.SIGINT, signal.default_int_handler)
        while True:
            prompt = "... " if self.multiline else ">>> "
            try:
                line = self.reader.read(prompt)
            except EOFError:
                out("")
                return 0
            except KeyboardInterrupt:
                if not self.multiline and not self.buffer:
                    out("\nUse Ctrl + d or /bye to exit.")
                else:
                    out("")
                self.buffer.clear()
                self.multiline = None
                continue
            if self.handle_line(line) is False:
                return 0

    def handle_line(self, line: str) -> bool:
        """Process one input line; False means the session ends."""
        if self.multiline:
            before, closed = (line[:-3], True) if line.endswith('"""') else (line, False)
            self.buffer.append(before)
            if not closed:
                return True
            kind, self.multiline = self.multiline, None
            text = "\n".join(self.buffer)
            self.buffer.clear()
            if kind == "system":
                self.set_system(text)
                return True
            return self.send(text)
        if line.startswith('"""'):
            body = line[3:]
            if body.endswith('"""') and len(body) >= 3:
                return self.send(body[:-3])
            self.buffer = [body]
            self.multiline = "prompt"
            return True
        stripped = line.strip()
        if stripped.startswith("/"):
            return self.command(stripped)
        if not line:
            return True
        return self.send(line)

    def send(self, text: str) -> bool:
        if not text:
            return True
        self.settings.messages.append({"role": "user", "content": text})
        try:
            answer = chat_once(self.client, self.settings)
        except ResponseError as exc:
            if "think" in str(exc):
                out(f"error: {exc}")
                self.settings.messages.pop()
                return True
            raise
        if answer is not None:
            self.settings.messages.append(answer)
        return True

    def set_system(self, text: str) -> None:
        self.settings.system = text
        message = {"role": "system", "content": text}
        if self.settings.messages and self.settings.messages[-1]["role"] == "system":
            self.settings.messages[-1] = message
        else:
            self.settings.messages.append(message)
        out("Set system message.")

    # -- slash commands

    def command(self, line: str) -> bool:
        words = line.split()
        name = words[0]
        if name in ("/bye", "/exit"):
            return False
        handlers = {
            "/set": self.cmd_set,
            "/show": self.cmd_show,
            "/load": self.cmd_load,
            "/save": self.cmd_save,
            "/clear": self.cmd_clear,
            "/?": self.cmd_help,
            "/help": self.cmd_help,
            "/list": self.cmd_list,
        }
        handler = handlers.get(name)
        if handler is None:
            out(f"Unknown command '{name}'. Type /? for help")
            return True
        handler(words, line)
        return True

    def cmd_help(self, words: list[str], line: str) -> None:
        topic = words[1].lstrip("/") if len(words) > 1 else ""
        texts = {
            "set": SET_HELP,
            "show": SHOW_HELP,
            "shortcut": SHORTCUTS_HELP,
            "shortcuts": SHORTCUTS_HELP,
        }
        sys.stderr.write(texts.get(topic, HELP_TEXT) + "\n")

    def cmd_list(self, words: list[str], line: str) -> None:
        models = self.client.list().get("models") or []
        out(display.list_table(models), end="")

    def _reset_conversation(self) -> None:
        """Forget the conversation; the session's system message (if any) stays in force."""
        self.settings.messages = []
        if self.settings.system:
            self.settings.messages.append({"role": "system", "content": self.settings.system})

    def cmd_clear(self, words: list[str], line: str) -> None:
        self._reset_conversation()
        out("Cleared session context")

    def cmd_set(self, words: list[str], line: str) -> None:
        settings = self.settings
        if len(words) < 2:
            sys.stderr.write(SET_HELP + "\n")
            return
        what = words[1]
        simple = {
            "history": lambda: self.reader.set_history(True),
            "nohistory": lambda: self.reader.set_history(False),
        }
        if what in simple:
            simple[what]()
        elif what in ("wordwrap", "nowordwrap"):
            settings.word_wrap = what == "wordwrap"
            out(f"Set '{what}' mode.")
        elif what in ("verbose", "quiet"):
            settings.verbose = what == "verbose"
            out(f"Set '{what}' mode.")
        elif what == "think":
            level = words[2] if len(words) > 2 else ""
            settings.think = THINK_LEVELS.get(level.lower(), level) if level else True
            settings.think_explicit = True
            self._warn_no_thinking()
            out(f"Set 'think' mode to '{level}'." if level else "Set 'think' mode.")
        elif what == "nothink":
            settings.think = False
            settings.think_explicit = True
            self._warn_no_thinking()
            out("Set 'nothink' mode.")
        elif what == "format":
            if len(words) < 3 or words[2] != "json":
                out("Invalid or missing format. For 'json' mode use '/set format json'")
            else:
                settings.format = "json"
                out("Set format to 'json' mode.")
        elif what == "noformat":
            settings.format = None
            out("Disabled format.")
        elif what == "parameter":
            self._set_parameter(words[2:])
        elif what == "system":
            self._set_system_command(line)
        else:
            out(f"Unknown command '/set {what}'. Type /? for help")

    def _warn_no_thinking(self) -> None:
        try:
            info = self.client.show(self.settings.model)
        except (ResponseError, ConnectionError):
            return
        if "thinking" not in (info.get("capabilities") or []):
            err(f'warning: model "{self.settings.model}" does not support thinking output')

    def _set_parameter(self, words: list[str]) -> None:
        if len(words) < 2:
            sys.stderr.write(PARAMETER_HELP + "\n")
            return
        name, values = words[0], words[1:]
        try:
            value = coerce_option(name, values if name == "stop" else " ".join(values))
        except OptionError as exc:
            out(f"Couldn't set parameter: {exc}")
            return
        self.settings.options[name] = value
        out(f"Set parameter '{name}' to '{', '.join(values)}'")

    def _set_system_command(self, line: str) -> None:
        text = line.split(None, 2)[2] if len(line.split(None, 2)) > 2 else ""
        if not text:
            sys.stderr.write(SET_HELP + "\n")
            return
        if text.startswith('"""'):
            text = text[3:]
            if text.endswith('"""') and len(text) >= 3:
                self.set_system(text[:-3])
                return
            self.buffer = [text]
            self.multiline = "system"
            return
        self.set_system(text)

    def cmd_show(self, words: list[str], line: str) -> None:
        if len(words) < 2:
            sys.stderr.write(SHOW_HELP + "\n")
            return
        settings = self.settings
        try:
            info = self.client.show(settings.model)
        except ResponseError:
            out("error: couldn't get model")
            raise
        what = words[1]
        if what == "info":
            sys.stderr.write(display.show_summary(info))
        elif what == "license":
            out(info.get("license") or "No license was specified for this model.")
        elif what == "modelfile":
            out(info.get("modelfile") or "")
        elif what == "parameters":
            out("Model defined parameters:")
            parameters = info.get("parameters") or ""
            if not parameters:
                out("  No additional parameters were specified for this model.")
            for parameter_line in parameters.splitlines():
                out(f"  {parameter_line}")
            out("")
            if settings.options:
                out("User defined parameters:")
                for key, value in settings.options.items():
                    out(f"  {key:<30} {value}")
                out("")
        elif what == "system":
            system = settings.system or info.get("system") or ""
            out(system + "\n" if system else "No system message was specified for this model.")
        elif what == "template":
            out(info.get("template") or "No prompt template was specified for this model.")
        else:
            out(f"Unknown command '/show {what}'. Type /? for help")

    def cmd_load(self, words: list[str], line: str) -> None:
        if len(words) != 2:
            out("Usage:\n  /load <modelname>")
            return
        settings = self.settings
        previous = attrs.evolve(settings, messages=list(settings.messages))
        settings.model = words[1]
        self._reset_conversation()
        settings.loaded_messages = []
        out(f"Loading model '{settings.model}'")
        try:
            info = self.client.show(settings.model)
            apply_show(settings, info)
            load_model(self.client, settings)
        except ResponseError as exc:
            if exc.status_code == 404 or "not found" in str(exc):
                out(f"Couldn't find model '{words[1]}'")
                self.settings = previous
                return
            raise

    def cmd_save(self, words: list[str], line: str) -> None:
        if len(words) != 2:
            out("Usage:\n  /save <modelname>")
            return
        settings = self.settings
        request: dict[str, Any] = {"from": settings.parent_model or settings.model}
        if settings.system:
            request["system"] = settings.system
        if settings.options:
            request["parameters"] = dict(settings.options)
        messages = [*settings.loaded_messages, *settings.messages]
        if messages:
            request["messages"] = messages
        try:
            self.client.create(words[1], **request)
        except ResponseError as exc:
            if "invalid model name" in str(exc).lower():
                out(f"error: The model name '{words[1]}' is invalid")
                return
            raise
        out(f"Created new model '{words[1]}'")
