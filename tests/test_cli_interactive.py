"""The interactive chat of `power run`: the session logic against hand-made server answers
(httpx.MockTransport), then the real thing in a pseudo-terminal (pexpect) against `power serve`."""

from __future__ import annotations

import json
import os
import re
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from power.cli.interactive import ChatSession
from power.cli.run import RunSettings, stream_answer
from power.client import Client

# ---------------------------------------------------------------- session logic


class FakeServer:
    """Answers /api/chat with the number of messages it got; records every request body."""

    def __init__(self) -> None:
        self.bodies: dict[str, list[dict]] = {}

    def handler(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else {}
        self.bodies.setdefault(request.url.path, []).append(body)
        if request.url.path == "/api/chat":
            n = len(body["messages"])
            lines = [
                {"message": {"role": "assistant", "content": f"answer to {n} "}, "done": False},
                {"message": {"role": "assistant", "content": "messages"}, "done": False},
                {
                    "message": {"role": "assistant", "content": ""},
                    "done": True,
                    "eval_count": 2,
                    "eval_duration": 10**9,
                },
            ]
            return httpx.Response(200, text="".join(json.dumps(line) + "\n" for line in lines))
        if request.url.path == "/api/show":
            if body["model"] == "missing":
                return httpx.Response(404, json={"error": "model 'missing' not found"})
            return httpx.Response(
                200,
                json={
                    "modelfile": "FROM x\n",
                    "parameters": "num_predict 8",
                    "template": "{{ .Prompt }}",
                    "details": {"parent_model": ""},
                    "capabilities": ["completion"],
                    "messages": [{"role": "user", "content": "loaded"}],
                },
            )
        if request.url.path == "/api/create":
            if body["model"] == "bad name":
                return httpx.Response(400, json={"error": "invalid model name"})
            return httpx.Response(200, json={"status": "success"})
        if request.url.path == "/api/generate":
            return httpx.Response(200, json={"done": True, "done_reason": "load"})
        return httpx.Response(404, json={"error": "not found"})


class Lines:
    """A LineReader stand-in that reads from a list."""

    def __init__(self, lines: list[str]) -> None:
        self.lines = iter(lines)
        self.history_enabled = True

    def read(self, prompt: str) -> str:
        try:
            return next(self.lines)
        except StopIteration:
            raise EOFError from None

    def set_history(self, enabled: bool) -> None:
        self.history_enabled = enabled


@pytest.fixture
def fake() -> FakeServer:
    return FakeServer()


def session(fake: FakeServer, lines: list[str]) -> ChatSession:
    client = Client("127.0.0.1:9", transport=httpx.MockTransport(fake.handler))
    return ChatSession(client, RunSettings(model="m", word_wrap=False), Lines(lines))


def test_conversation_history_is_sent_with_each_request(
    fake: FakeServer, capsys: pytest.CaptureFixture[str]
) -> None:
    chat = session(
        fake,
        [
            "Hello",
            "",
            "How are you?",
            '"""first line',
            "second line",
            'end"""',
            "/bye",
            "never read",
        ],
    )
    assert chat.loop() == 0
    bodies = fake.bodies["/api/chat"]
    assert len(bodies) == 3
    assert bodies[0]["messages"] == [{"role": "user", "content": "Hello"}]
    assert bodies[1]["messages"] == [
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "answer to 1 messages"},
        {"role": "user", "content": "How are you?"},
    ]
    assert bodies[2]["messages"][-1] == {"role": "user", "content": "first line\nsecond line\nend"}
    assert all(body["stream"] is True and body["model"] == "m" for body in bodies)
    out = capsys.readouterr().out
    assert "answer to 1 messages\n\n" in out and "answer to 3 messages\n\n" in out


def test_set_commands_change_the_requests(
    fake: FakeServer, capsys: pytest.CaptureFixture[str]
) -> None:
    chat = session(
        fake,
        [
            "/set parameter temperature 0",
            "/set parameter stop <end> ###",
            "/set parameter num_predict lots",
            "/set parameter nonsense 1",
            "/set format json",
            "/set think",
            "/set system You are terse.",
            "/set verbose",
            "hi",
            "/set noformat",
            "/set nothink",
            "/set quiet",
            '/set system """Two',
            'lines."""',
            "again",
        ],
    )
    chat.loop()
    first, second = fake.bodies["/api/chat"]
    assert first["options"] == {"temperature": 0.0, "stop": ["<end>", "###"]}
    assert first["format"] == "json" and first["think"] is True
    assert first["messages"][0] == {"role": "system", "content": "You are terse."}
    assert "format" not in second and second["think"] is False
    system_messages = [m for m in second["messages"] if m["role"] == "system"]
    assert system_messages == [
        {"role": "system", "content": "You are terse."},
        {"role": "system", "content": "Two\nlines."},
    ]
    captured = capsys.readouterr()
    out = captured.out
    for text in (
        "Set parameter 'temperature' to '0'",
        "Set parameter 'stop' to '<end>, ###'",
        "Couldn't set parameter",
        "Set format to 'json' mode.",
        "Set 'think' mode.",
        "Set system message.",
        "Set 'verbose' mode.",
        "Disabled format.",
        "Set 'nothink' mode.",
        "Set 'quiet' mode.",
    ):
        assert text in out
    assert captured.err.count("eval count:") == 1  # verbose for the first answer only
    assert "does not support thinking" in captured.err


def test_clear_show_help_and_unknown(fake: FakeServer, capsys: pytest.CaptureFixture[str]) -> None:
    chat = session(
        fake,
        [
            "/set system Be kind.",
            "hello",
            "/clear",
            "after",
            "/set parameter seed 42",
            "/show parameters",
            "/show system",
            "/show template",
            "/show modelfile",
            "/show license",
            "/show",
            "/?",
            "/help set",
            "/? shortcuts",
            "/set",
            "/set parameter",
            "/frob",
            "/set frob",
            "/show frob",
        ],
    )
    chat.loop()
    after = fake.bodies["/api/chat"][-1]["messages"]
    assert after == [
        {"role": "system", "content": "Be kind."},
        {"role": "user", "content": "after"},
    ]
    captured = capsys.readouterr()
    out, err = captured.out, captured.err
    assert "Cleared session context" in out
    assert "Model defined parameters:\n  num_predict 8\n\nUser defined parameters:\n  seed" in out
    assert "Be kind.\n" in out and "{{ .Prompt }}" in out and "FROM x" in out
    assert "No license was specified for this model." in out
    assert "Unknown command '/frob'. Type /? for help" in out
    assert "Unknown command '/set frob'. Type /? for help" in out
    assert "Unknown command '/show frob'. Type /? for help" in out
    assert "/show modelfile" in err and "Available Commands:" in err and "/set parameter ..." in err
    assert "Ctrl + d" in err and "Available Parameters:" in err and '"""' in err


def test_save_and_load(fake: FakeServer, capsys: pytest.CaptureFixture[str]) -> None:
    chat = session(
        fake,
        [
            "/set system Short answers.",
            "/set parameter temperature 0.5",
            "hello",
            "/save saved",
            "/save bad name",
            "/save",
            "/load missing",
            "/load other",
            "/load",
        ],
    )
    chat.settings.loaded_messages = [{"role": "user", "content": "from the Modelfile"}]
    chat.loop()
    created = [body for body in fake.bodies["/api/create"] if body["model"] == "saved"][0]
    assert created["from"] == "m"
    assert created["system"] == "Short answers."
    assert created["parameters"] == {"temperature": 0.5}
    assert created["messages"] == [
        {"role": "user", "content": "from the Modelfile"},
        {"role": "system", "content": "Short answers."},
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "answer to 2 messages"},
    ]
    out = capsys.readouterr().out
    assert "Created new model 'saved'" in out
    assert "Usage:\n  /save <modelname>" in out and "Usage:\n  /load <modelname>" in out
    assert "Couldn't find model 'missing'" in out
    assert "Loading model 'other'" in out
    assert chat.settings.model == "other"
    assert chat.settings.messages == [{"role": "system", "content": "Short answers."}]
    assert chat.settings.loaded_messages == [{"role": "user", "content": "loaded"}]
    assert fake.bodies["/api/generate"][-1]["model"] == "other"  # loaded


def test_interrupted_answer_closes_the_stream(capsys: pytest.CaptureFixture[str]) -> None:
    closed = []

    def chunks() -> Iterator[dict]:
        try:
            yield {"message": {"content": "partial "}}
            yield {"message": {"content": "answer"}}
            raise KeyboardInterrupt
        finally:
            closed.append(True)

    content, thinking, final = stream_answer(
        chunks(), RunSettings(model="m", word_wrap=False), chat=True
    )
    assert (content, thinking, final) == ("partial answer", "", None)
    assert closed == [True]
    assert capsys.readouterr().out == "partial answer"


def test_thinking_is_shown_apart_or_hidden(capsys: pytest.CaptureFixture[str]) -> None:
    chunks = [
        {"message": {"thinking": "let me see"}},
        {"message": {"content": "42"}},
        {"message": {"content": ""}, "done": True},
    ]
    content, thinking, final = stream_answer(
        iter(chunks), RunSettings(model="m", word_wrap=False), chat=True
    )
    assert (content, thinking, final["done"]) == ("42", "let me see", True)
    assert capsys.readouterr().out == "Thinking...\nlet me see\n...done thinking.\n\n42"
    stream_answer(
        iter(chunks), RunSettings(model="m", word_wrap=False, hide_thinking=True), chat=True
    )
    assert capsys.readouterr().out == "42"


# ---------------------------------------------------------------- in a terminal, for real

pexpect = pytest.importorskip("pexpect")

TEMPLATE = "{{ range .Messages }}{{ .Role }}: {{ .Content }}\n{{ end }}assistant:"
PROMPT = ">>> "


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from conftest import run_power_server

    store = tmp_path_factory.mktemp("chat-store") / "models"
    store.mkdir()
    with run_power_server(store) as url:
        yield url


@pytest.fixture(scope="module")
def chat_env(server: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "POWER_HOST": server.removeprefix("http://"),
            "HOME": str(tmp_path_factory.mktemp("home")),
            "TERM": "dumb",
        }
    )
    env.pop("OLLAMA_HOST", None)
    env.pop("POWER_NOHISTORY", None)
    return env


def power(env: dict[str, str], *args: str) -> str:
    import subprocess

    result = subprocess.run(
        [sys.executable, "-m", "power", *args],
        capture_output=True,
        text=True,
        env=env,
        stdin=subprocess.DEVNULL,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture(scope="module")
def chat_model(
    chat_env: dict[str, str], gemma_gguf: Path, tmp_path_factory: pytest.TempPathFactory
) -> str:
    folder = tmp_path_factory.mktemp("chat-modelfile")
    (folder / "Modelfile").write_text(
        f'FROM {gemma_gguf}\nTEMPLATE """{TEMPLATE}"""\nPARAMETER num_predict 6\n'
    )
    power(chat_env, "create", "chat-cli", "-f", str(folder / "Modelfile"))
    return "chat-cli"


def spawn(env: dict[str, str], *args: str, ignoring_sigint: bool = False) -> pexpect.spawn:
    """`power run ARGS` in a terminal; `ignoring_sigint`: started with SIGINT ignored, as a
    shell without job control starts a background command (`power run ... &` in a script)."""
    child = pexpect.spawn(
        sys.executable,
        ["-m", "power", "run", *args],
        env=env,
        encoding="utf-8",
        timeout=120,
        dimensions=(40, 160),
        preexec_fn=(lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
        if ignoring_sigint
        else None,
    )
    child.expect_exact(PROMPT)
    return child


def say(child: pexpect.spawn, line: str, *expected: str) -> None:
    child.sendline(line)
    for text in expected:
        child.expect_exact(text)
    child.expect_exact(PROMPT)


@pytest.mark.slow
def test_a_chat_in_a_terminal(chat_env: dict[str, str], chat_model: str) -> None:
    child = spawn(chat_env, chat_model, "--nowordwrap")
    say(child, "/set parameter temperature 0", "Set parameter 'temperature' to '0'")
    say(child, "/set parameter seed 7", "Set parameter 'seed' to '7'")
    say(child, "Hello, who are you?")
    say(child, "And what is two plus two?")
    child.sendline('"""Tell me')
    child.expect_exact("... ")
    say(child, 'a short story."""')
    say(child, "/show modelfile", "FROM ", "PARAMETER num_predict 6")
    say(child, "/set verbose", "Set 'verbose' mode.")
    say(child, "One more", "eval count:", "eval rate:")
    say(child, "/set quiet", "Set 'quiet' mode.")
    say(child, "/save chat-saved", "Created new model 'chat-saved'")
    child.sendline("/bye")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0

    modelfile = power(chat_env, "show", "chat-saved", "--modelfile")
    assert "MESSAGE user Hello, who are you?" in modelfile
    assert "MESSAGE user And what is two plus two?" in modelfile
    assert "Tell me\na short story." in modelfile
    assert modelfile.count("MESSAGE assistant") == 4
    assert re.search(r"PARAMETER temperature 0\b", modelfile) and "PARAMETER seed 7" in modelfile


@pytest.mark.slow
def test_ctrl_c_stops_the_answer_and_ctrl_d_leaves(
    chat_env: dict[str, str], chat_model: str
) -> None:
    # started with SIGINT ignored: the chat must still answer Ctrl+C (it once did nothing at
    # all when the test suite itself ran in the background of a script)
    child = spawn(chat_env, chat_model, "--nowordwrap", "--num-ctx", "2048", ignoring_sigint=True)
    say(child, "/set parameter num_predict 100000", "Set parameter 'num_predict'")
    child.sendline("Write a very long story about a dragon.")
    child.expect_exact("\x1b[2K\x1b[1G")  # the spinner was erased: the first words arrived
    child.sendintr()
    child.expect_exact(PROMPT)  # back at the prompt, the session goes on
    say(child, "/set parameter num_predict 3", "Set parameter 'num_predict' to '3'")
    say(child, "Still there?")
    child.sendintr()  # at an empty prompt: a reminder, not an exit
    child.expect_exact("Use Ctrl + d or /bye to exit.")
    child.expect_exact(PROMPT)
    child.sendeof()
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


@pytest.mark.slow
def test_load_set_show_in_a_terminal(chat_env: dict[str, str], chat_model: str) -> None:
    power(chat_env, "cp", chat_model, "chat-copy")
    child = spawn(chat_env, chat_model)
    say(child, "/set system You are a pirate.", "Set system message.")
    say(child, "/show system", "You are a pirate.")
    say(child, "/show info", "architecture", "gemma3", "quantization")
    say(child, "/load no-such-model", "Couldn't find model 'no-such-model'")
    say(child, "/load chat-copy", "Loading model 'chat-copy'")
    say(child, "/show system", "You are a pirate.")  # the session's system message stays
    say(child, "/set format json", "Set format to 'json' mode.")
    say(child, "/set parameter num_predict 4", "Set parameter")
    say(child, "Give me JSON", "{")
    say(child, "/clear", "Cleared session context")
    say(child, "/?", "Available Commands:", "/bye")
    say(child, "/nonsense", "Unknown command '/nonsense'. Type /? for help")
    child.sendline("/bye")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    history = Path(chat_env["HOME"]) / ".power" / "history"
    assert "/show system" in history.read_text()
