"""The `power` CLI: usage and errors in-process, then every command end to end against a real
`power serve` (gemma-3-270m imported with `power create`) and a real docker-registry."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from power import __version__
from power.cli import main as cli_main
from power.cli.main import COMMANDS, main

# ---------------------------------------------------------------- usage (no server)


def test_no_arguments_prints_the_overview(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 0
    text = capsys.readouterr().out
    assert "Usage:" in text and "power <command>" in text
    for command in (
        "serve",
        "create",
        "show",
        "run",
        "stop",
        "pull",
        "push",
        "list",
        "ps",
        "cp",
        "rm",
    ):
        assert f"\n  {command}" in text


@pytest.mark.parametrize("argv", [["help", "run"], ["run", "--help"], ["run", "-h"]])
def test_run_usage(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "power run [options] MODEL [PROMPT...]" in text
    for flag in (
        "--prompt",
        "--temperature",
        "--top-p",
        "--top-k",
        "--num-predict",
        "--num-ctx",
        "--repeat-penalty",
        "--seed",
        "--format",
        "--system",
        "--template",
        "--keep-alive",
        "--verbose",
        "--insecure",
        "--think",
        "--hidethinking",
        "--nowordwrap",
    ):
        assert flag in text


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_has_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["help", command]) == 0
    assert f"power {command}" in capsys.readouterr().out


def test_help_for_an_alias_and_an_unknown_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["help", "ls"]) == 0
    assert "power list" in capsys.readouterr().out
    assert main(["help", "nope"]) == 1
    assert "unknown command 'nope'" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "--bogus", "m"],
        ["list", "--frob"],
        ["--bogus"],
        ["show", "-x", "m"],
        ["cp", "onlyone"],
        ["run"],
    ],
)
def test_usage_errors_print_usage_and_exit_1(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert "Usage:" in captured.err
    assert "Traceback" not in captured.err
    if any(arg.startswith("-") for arg in argv):
        assert f"Error: unknown flag: {next(a for a in argv if a.startswith('-'))}" in captured.err


def test_unknown_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["frobnicate"]) == 1
    assert "Error: unknown command 'frobnicate' for 'power'" in capsys.readouterr().err


@pytest.fixture
def dead_host(monkeypatch: pytest.MonkeyPatch) -> str:
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
    port = sock.getsockname()[1]
    monkeypatch.setenv("POWER_HOST", f"127.0.0.1:{port}")
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))  # `run` reads piped stdin
    yield f"http://127.0.0.1:{port}"
    sock.close()


@pytest.mark.parametrize(
    "argv",
    [
        ["list"],
        ["ps"],
        ["show", "m"],
        ["run", "m", "hi"],
        ["pull", "m"],
        ["rm", "m"],
        ["cp", "a", "b"],
        ["stop", "m"],
    ],
)
def test_server_not_running(
    argv: list[str], dead_host: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err == (
        f"Error: could not connect to power server at {dead_host}, is it running? Start it with 'power serve'\n"
    )


def test_version_without_a_server(dead_host: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-v"]) == 0
    out = capsys.readouterr().out
    assert "Warning: could not connect to a running power instance" in out
    assert f"Warning: client version is {__version__}" in out
    assert main(["--version"]) == 0 and main(["version"]) == 0


def test_invalid_flag_values_are_one_error_line(
    dead_host: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", "m", "hi", "--temperature", "warm"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("Error: invalid value for --temperature") and err.count("\n") == 1
    assert main(["run", "m", "hi", "--think=loud"]) == 1
    assert "(must be true, false, high, medium, low, or max)" in capsys.readouterr().err
    assert main(["run", "m", "hi", "--format", "{not json"]) == 1
    assert "invalid --format" in capsys.readouterr().err


def test_think_levels_of_run() -> None:
    from power.cli.run import parse_think

    assert [parse_think(v) for v in ("true", "False", "low", "medium", "high", "MAX")] == [
        True,
        False,
        "low",
        "medium",
        "high",
        "max",
    ]


def test_create_with_a_missing_modelfile(
    dead_host: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert main(["create", "m", "-f", str(tmp_path / "nope")]) == 1
    assert capsys.readouterr().err == "Error: specified Modelfile wasn't found\n"
    bad = tmp_path / "Modelfile"
    bad.write_text("FROM x\nFROB y\n")
    assert main(["create", "m", "-f", str(bad)]) == 1
    assert "unknown command" in capsys.readouterr().err
    assert main(["create", "bad name!", "-f", str(bad)]) == 1
    assert capsys.readouterr().err == "Error: invalid model name: bad name!\n"


def test_serve_is_imported_lazily(monkeypatch: pytest.MonkeyPatch) -> None:
    import types

    fake = types.ModuleType("power.http.server")
    fake.serve_main = lambda: 0
    monkeypatch.setitem(sys.modules, "power.http.server", fake)
    assert main(["serve"]) == 0
    assert cli_main.ALIASES["start"] == "serve"


# ---------------------------------------------------------------- end to end

TEMPLATE = "{{ if .System }}{{ .System }}\n{{ end }}{{ .Prompt }}"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One `power serve` for this module (empty store at start)."""
    from conftest import run_power_server

    store = tmp_path_factory.mktemp("cli-store") / "models"
    store.mkdir()
    with run_power_server(store) as url:
        yield url


@pytest.fixture(scope="module")
def cli_env(server: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "POWER_HOST": server.removeprefix("http://"),
            "HOME": str(tmp_path_factory.mktemp("home")),
            "TERM": "dumb",
            "COLUMNS": "120",
        }
    )
    env.pop("OLLAMA_HOST", None)
    return env


def power(
    env: dict[str, str], *args: str, stdin: str | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """Run the real entry point (`python -m power`), stdin/stdout/stderr on pipes."""
    return subprocess.run(
        [sys.executable, "-m", "power", *args],
        input=stdin if stdin is not None else "",
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, (
        f"rc={result.returncode}\nstdout={result.stdout}\nstderr={result.stderr}"
    )
    assert "Traceback" not in result.stderr
    return result


def failed(result: subprocess.CompletedProcess[str]) -> str:
    """The one error line of a failed command."""
    assert result.returncode == 1, (
        f"rc={result.returncode}\nstdout={result.stdout}\nstderr={result.stderr}"
    )
    lines = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


@pytest.fixture(scope="module")
def gemma(
    cli_env: dict[str, str], gemma_gguf: Path, tmp_path_factory: pytest.TempPathFactory
) -> str:
    """gemma-3-270m imported as `gemma-cli` with `power create` (FROM a GGUF path)."""
    folder = tmp_path_factory.mktemp("modelfile")
    (folder / "Modelfile").write_text(
        f'FROM {gemma_gguf}\nTEMPLATE """{TEMPLATE}"""\nPARAMETER num_predict 8\nPARAMETER stop "<eos>"\n'
        "LICENSE Gemma terms of use\n"
    )
    result = ok(power(cli_env, "create", "gemma-cli", "-f", str(folder / "Modelfile")))
    assert result.stderr.rstrip().endswith("success")
    assert "copying file sha256:" in result.stderr
    return "gemma-cli"


@pytest.mark.slow
def test_list_and_show(cli_env: dict[str, str], gemma: str, gemma_gguf: Path) -> None:
    lines = ok(power(cli_env, "list")).stdout.splitlines()
    assert lines[0].split() == ["NAME", "ID", "SIZE", "MODIFIED"]
    row = next(re.split(r"\s{2,}", line) for line in lines if line.startswith("gemma-cli:latest"))
    assert re.fullmatch(r"[0-9a-f]{12}", row[1])
    assert row[2] == "253 MB"
    assert re.fullmatch(
        r"(Less than a second|1 second|\d+ seconds|About a minute|\d+ minutes) ago", row[3]
    )
    names = [line.split()[0] for line in ok(power(cli_env, "ls", "gemma")).stdout.splitlines()]
    assert names == ["NAME", "gemma-cli:latest"]  # the prefix filter; "ls" is "list"
    assert len(ok(power(cli_env, "list", "zzz")).stdout.splitlines()) == 1  # the header only

    summary = ok(power(cli_env, "show", gemma)).stdout
    assert re.search(
        r"^  Model\n    architecture\s+gemma3\n    parameters\s+268\.\d+M\n", summary, re.M
    )
    assert re.search(r"^    context length\s+32768$", summary, re.M)
    assert re.search(r"^    embedding length\s+640$", summary, re.M)
    assert re.search(r"^    quantization\s+Q4_K_M$", summary, re.M)
    assert "  Capabilities\n    completion" in summary
    assert re.search(r"^  Parameters\n(    .*\n)*    num_predict\s+8$", summary, re.M)
    assert "  License\n    Gemma terms of use" in summary
    assert "Metadata" not in summary
    assert "tokenizer.ggml" in ok(power(cli_env, "show", gemma, "--verbose")).stdout

    modelfile = ok(power(cli_env, "show", gemma, "--modelfile")).stdout
    assert re.search(r"^FROM ", modelfile, re.M) and "PARAMETER num_predict 8" in modelfile
    assert ok(power(cli_env, "show", gemma, "--template")).stdout == TEMPLATE
    assert "num_predict" in ok(power(cli_env, "show", gemma, "--parameters")).stdout
    assert ok(power(cli_env, "show", gemma, "--license")).stdout == "Gemma terms of use\n"
    assert ok(power(cli_env, "show", gemma, "--system")).stdout == ""
    assert "only one of" in failed(power(cli_env, "show", gemma, "--license", "--system"))
    assert "not found" in failed(power(cli_env, "show", "no-such-model"))


@pytest.mark.slow
def test_run_one_shot(cli_env: dict[str, str], gemma: str) -> None:
    result = ok(
        power(
            cli_env,
            "run",
            gemma,
            "The capital of France is",
            "--temperature",
            "0",
            "--num-predict",
            "6",
        )
    )
    assert result.stdout.endswith("\n\n") and result.stdout.strip()
    assert "\x1b" not in result.stdout  # not a terminal: no escape codes, no wrapping
    again = ok(
        power(
            cli_env,
            "run",
            gemma,
            "--prompt",
            "The capital of France is",
            "--temperature",
            "0",
            "--num-predict",
            "6",
        )
    )
    assert again.stdout == result.stdout  # greedy: the same words


@pytest.mark.slow
def test_run_piped_stdin_and_verbose(cli_env: dict[str, str], gemma: str) -> None:
    result = ok(
        power(
            cli_env,
            "run",
            gemma,
            "--verbose",
            "--seed",
            "3",
            "--top-k",
            "5",
            "--top-p",
            "0.5",
            stdin="Once upon a time",
        )
    )
    assert result.stdout.strip()
    for label in (
        "total duration:",  # "load duration:" only when the model had to be loaded
        "prompt eval count:",
        "prompt eval duration:",
        "prompt eval rate:",
        "eval count:",
        "eval duration:",
        "eval rate:",
    ):
        assert re.search(rf"^{label}\s+\S", result.stderr, re.M), result.stderr
    assert re.search(
        r"^eval count:\s+[1-8] token\(s\)$", result.stderr, re.M
    )  # the model's num_predict 8
    assert re.search(r"^eval rate:\s+\d+\.\d\d tokens/s$", result.stderr, re.M)


def _prompt_tokens(stderr: str) -> int:
    return int(re.search(r"^prompt eval count:\s+(\d+) token", stderr, re.M).group(1))


@pytest.mark.slow
def test_run_system_template_and_options(cli_env: dict[str, str], gemma: str) -> None:
    base = ["run", gemma, "Hello", "--verbose", "--num-predict", "1", "--keep-alive", "5m"]
    plain = ok(power(cli_env, *base))
    system = " ".join(["You are a very helpful assistant."] * 5)
    with_system = ok(power(cli_env, *base, "--system", system))
    assert _prompt_tokens(with_system.stderr) > _prompt_tokens(plain.stderr) + 20
    without_system = ok(power(cli_env, *base, "--system", system, "--template", "{{ .Prompt }}"))
    assert _prompt_tokens(without_system.stderr) == _prompt_tokens(plain.stderr)
    ok(power(cli_env, *base, "--num-ctx", "1024", "--repeat-penalty", "1.2"))
    assert "1024" in ok(power(cli_env, "ps")).stdout
    assert "invalid" in failed(power(cli_env, "run", gemma, "hi", "--keep-alive", "soon")).lower()


@pytest.mark.slow
def test_run_format_json(cli_env: dict[str, str], gemma: str, tmp_path: Path) -> None:
    result = ok(
        power(
            cli_env,
            "run",
            gemma,
            "A JSON object:",
            "--format",
            "json",
            "--num-predict",
            "6",
            "--temperature",
            "0",
        )
    )
    assert result.stdout.lstrip().startswith("{")
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    schema_file = tmp_path / "schema.json"
    schema_file.write_text(json.dumps(schema))
    result = ok(
        power(
            cli_env,
            "run",
            gemma,
            "Count:",
            "--format",
            str(schema_file),
            "--num-predict",
            "8",
            "--temperature",
            "0",
        )
    )
    assert result.stdout.lstrip().startswith('{"n"') or result.stdout.lstrip().startswith('{ "n"')


@pytest.mark.slow
def test_ps_and_stop(cli_env: dict[str, str], gemma: str) -> None:
    ok(power(cli_env, "run", gemma, "Hi", "--num-predict", "1", "--keep-alive", "10m"))
    lines = ok(power(cli_env, "ps")).stdout.splitlines()
    assert lines[0].split() == ["NAME", "ID", "SIZE", "PROCESSOR", "CONTEXT", "UNTIL"]
    row = next(re.split(r"\s{2,}", line) for line in lines if line.startswith("gemma-cli:latest"))
    assert re.fullmatch(r"[0-9a-f]{12}", row[1])
    assert row[2].endswith("MB") and row[3] == "100% CPU" and row[4].isdigit()
    assert re.fullmatch(r"(9|10) minutes from now", row[5])
    ok(power(cli_env, "run", gemma, "Hi", "--num-predict", "1", "--keep-alive", "-1"))
    assert "Forever" in ok(power(cli_env, "ps")).stdout
    assert ok(power(cli_env, "stop", gemma)).stdout == ""
    assert "gemma-cli" not in ok(power(cli_env, "ps")).stdout
    assert (
        failed(power(cli_env, "stop", "no-such-model"))
        == 'Error: couldn\'t find model "no-such-model" to stop'
    )
    ok(power(cli_env, "run", gemma, "Hi", "--num-predict", "1", "--keep-alive", "0"))
    assert "gemma-cli" not in ok(power(cli_env, "ps")).stdout


@pytest.mark.slow
def test_cp_rm_and_a_derived_model(cli_env: dict[str, str], gemma: str, tmp_path: Path) -> None:
    assert ok(power(cli_env, "cp", gemma, "copy-cli")).stdout == f"copied '{gemma}' to 'copy-cli'\n"
    assert "copy-cli:latest" in ok(power(cli_env, "list")).stdout
    assert ok(power(cli_env, "rm", "copy-cli")).stdout == "deleted 'copy-cli'\n"
    assert "copy-cli" not in ok(power(cli_env, "list")).stdout
    assert "not found" in failed(power(cli_env, "rm", "copy-cli"))
    assert "not found" in failed(power(cli_env, "cp", "no-such-model", "x"))
    assert "invalid" in failed(power(cli_env, "cp", gemma, "bad name!")).lower()

    (tmp_path / "Modelfile").write_text(
        f"FROM {gemma}\nSYSTEM You answer in French.\nPARAMETER temperature 0.3\n"
        'PARAMETER stop "###"\nPARAMETER stop "END"\nMESSAGE user Bonjour\nMESSAGE assistant Salut\n'
    )
    result = ok(power(cli_env, "create", "derived-cli", "--file", str(tmp_path / "Modelfile")))
    assert result.stderr.rstrip().endswith("success")
    assert ok(power(cli_env, "show", "derived-cli", "--system")).stdout == "You answer in French."
    parameters = ok(power(cli_env, "show", "derived-cli", "--parameters")).stdout
    assert "temperature" in parameters and "###" in parameters and "END" in parameters
    modelfile = ok(power(cli_env, "show", "derived-cli", "--modelfile")).stdout
    assert "MESSAGE user Bonjour" in modelfile and "MESSAGE assistant Salut" in modelfile
    assert ok(power(cli_env, "show", "derived-cli", "--template")).stdout == TEMPLATE  # inherited
    ok(power(cli_env, "rm", "derived-cli"))


@pytest.mark.slow
def test_version_with_a_server(cli_env: dict[str, str]) -> None:
    out = ok(power(cli_env, "--version")).stdout
    assert re.match(r"power version is \S+\n", out)
    assert ok(power(cli_env, "version")).stdout == out


@pytest.mark.slow
@pytest.mark.registry
def test_push_pull_and_run_pulls(cli_env: dict[str, str], gemma: str, registry_server: str) -> None:
    remote = f"{registry_server}/library/gemma-cli:v1"
    ok(power(cli_env, "cp", gemma, remote))
    pushed = ok(power(cli_env, "push", remote, "--insecure"))
    assert pushed.stdout == f"\nYou can find your model at:\n\n\t{remote}\n"
    assert pushed.stderr.rstrip().endswith("success")
    ok(power(cli_env, "rm", remote))

    pulled = ok(power(cli_env, "pull", remote, "--insecure"))
    assert "pulling manifest" in pulled.stderr
    assert pulled.stderr.rstrip().endswith("success")
    assert f"{remote}" in ok(power(cli_env, "list")).stdout
    updated = ok(power(cli_env, "update", remote, "--insecure"))
    assert f"updating '{remote}'" in updated.stderr and updated.stderr.rstrip().endswith("success")
    ok(power(cli_env, "rm", remote))

    # `run` pulls a model the server lacks, then answers
    ran = ok(power(cli_env, "run", remote, "Hello", "--insecure", "--num-predict", "2"))
    assert ran.stdout.strip() and "success" in ran.stderr
    ok(power(cli_env, "rm", remote))

    missing = f"{registry_server}/library/not-there:v1"
    assert failed(power(cli_env, "pull", missing, "--insecure"))
    assert failed(power(cli_env, "update", missing, "--insecure"))
    assert failed(power(cli_env, "run", missing, "hi", "--insecure"))


@pytest.mark.slow
def test_create_from_a_safetensors_folder_with_quantize(
    cli_env: dict[str, str], minilm_dir: Path, tmp_path: Path
) -> None:
    (tmp_path / "Modelfile").write_text(f"FROM {minilm_dir}\n")
    result = ok(
        power(cli_env, "create", "minilm-cli", "-f", str(tmp_path / "Modelfile"), "-q", "q8_0")
    )
    assert result.stderr.rstrip().endswith("success")
    summary = ok(power(cli_env, "show", "minilm-cli")).stdout
    assert re.search(r"^    architecture\s+bert$", summary, re.M)
    assert re.search(r"^    quantization\s+Q8_0$", summary, re.M)
    assert "embedding" in summary
    vector = json.loads(ok(power(cli_env, "run", "minilm-cli", "hello world")).stdout)
    assert len(vector) == 384
    assert "embedding models require input text" in failed(power(cli_env, "run", "minilm-cli"))
    ok(power(cli_env, "rm", "minilm-cli"))


def test_create_request_from_a_modelfile(tmp_path: Path) -> None:
    """FROM/ADAPTER files become uploaded blobs; a folder or a name goes in `from`."""
    import hashlib

    import httpx

    from power.cli.main import build_create_request
    from power.cli.progress import Progress
    from power.client import Client
    from power.registry.modelfile import parse_modelfile

    uploaded: dict[str, bytes] = {}

    def handler(request: httpx.Request) -> httpx.Response:
        digest = request.url.path.removeprefix("/api/blobs/")
        if request.method == "HEAD":
            return httpx.Response(200 if digest in uploaded else 404)
        uploaded[digest] = request.read()
        return httpx.Response(201)

    (tmp_path / "weights.gguf").write_bytes(b"GGUF weights")
    (tmp_path / "lora.gguf").write_bytes(b"GGUF adapter")
    (tmp_path / "folder").mkdir()
    text = (
        "FROM ./weights.gguf\nADAPTER lora.gguf\nTEMPLATE {{ .Prompt }}\nSYSTEM Be brief.\n"
        "PARAMETER temperature 0.2\nPARAMETER stop a\nPARAMETER stop b\nLICENSE one\nLICENSE two\n"
        "MESSAGE user hi\nMESSAGE assistant hello\n"
    )
    stream = io.StringIO()
    with Client("127.0.0.1:9", transport=httpx.MockTransport(handler)) as client:
        progress = Progress(stream, tty=False)
        request = build_create_request(client, progress, parse_modelfile(text), tmp_path)
        progress.stop()
        digest = "sha256:" + hashlib.sha256(b"GGUF weights").hexdigest()
        assert request == {
            "files": {"weights.gguf": digest},
            "adapters": {"lora.gguf": "sha256:" + hashlib.sha256(b"GGUF adapter").hexdigest()},
            "template": "{{ .Prompt }}",
            "system": "Be brief.",
            "license": ["one", "two"],
            "parameters": {"temperature": 0.2, "stop": ["a", "b"]},
            "messages": [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "hello"},
            ],
        }
        assert uploaded[digest] == b"GGUF weights"
        assert f"copying file {digest} 100%" in stream.getvalue()
        folder = build_create_request(client, progress, parse_modelfile("FROM folder\n"), tmp_path)
        assert folder == {"from": str((tmp_path / "folder").resolve())}
        named = build_create_request(
            client, progress, parse_modelfile("FROM llama3:8b\n"), tmp_path
        )
        assert named == {"from": "llama3:8b"}
        with pytest.raises(cli_main.CommandError, match="adapter file not found"):
            build_create_request(
                client, progress, parse_modelfile("FROM x\nADAPTER nope.gguf\n"), tmp_path
            )
