"""The `power` command line: a client of the power HTTP API, shaped like Ollama's CLI.

Each command's usage text (power.cli.usage) is both its documentation (`power help COMMAND`,
`power COMMAND --help`) and its parser (docopt-ng). `main(argv)` returns the exit status:
0 on success, 1 on any error, with one `Error: ...` line on stderr and never a traceback; an
unknown flag or a missing argument prints the command's usage on stderr and returns 1.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
from docopt import DocoptExit, docopt

from power.cli import display
from power.cli.common import CommandError, err, out, pull_with_progress
from power.cli.progress import Progress, ProgressTracker
from power.cli.usage import (
    CP_USAGE,
    CREATE_USAGE,
    HELP_USAGE,
    LIST_USAGE,
    PS_USAGE,
    PULL_USAGE,
    PUSH_USAGE,
    RM_USAGE,
    RPC_WORKER_USAGE,
    RUN_USAGE,
    SERVE_USAGE,
    SHOW_USAGE,
    STOP_USAGE,
    TOP_USAGE,
    UPDATE_USAGE,
    VERSION_USAGE,
)
from power.client import Client, ResponseError
from power.version import __version__

if TYPE_CHECKING:
    from power.registry.modelfile import Modelfile


# ---------------------------------------------------------------- simple commands


def cmd_serve(args: dict[str, Any]) -> int:
    from power.http.server import serve_main

    if args.get("--rpc"):
        os.environ["POWER_RPC_SERVERS"] = args["--rpc"]
    if args.get("--tensor-split"):
        os.environ["POWER_TENSOR_SPLIT"] = args["--tensor-split"]
    return serve_main() or 0


def cmd_rpc_worker(args: dict[str, Any]) -> int:
    from power.cli.rpc_worker import main as rpc_worker_main

    return rpc_worker_main(args)


def cmd_list(args: dict[str, Any]) -> int:
    with Client() as client:
        models = client.list().get("models") or []
    prefix = (args["PREFIX"] or "").lower()
    shown = [m for m in models if (m.get("name") or m.get("model", "")).lower().startswith(prefix)]
    out(display.list_table(shown), end="")
    return 0


def cmd_ps(args: dict[str, Any]) -> int:
    with Client() as client:
        models = client.ps().get("models") or []
    prefix = args["PREFIX"] or ""
    shown = [m for m in models if (m.get("name") or m.get("model", "")).startswith(prefix)]
    out(display.ps_table(shown), end="")
    return 0


def cmd_cp(args: dict[str, Any]) -> int:
    with Client() as client:
        client.copy(args["SOURCE"], args["DESTINATION"])
    out(f"copied '{args['SOURCE']}' to '{args['DESTINATION']}'")
    return 0


def unload(client: Client, model: str) -> None:
    """Ask the server to unload `model` (an empty generate with keep_alive 0)."""
    client.generate(model, "", keep_alive=0)


def cmd_rm(args: dict[str, Any]) -> int:
    with Client() as client:
        for name in args["MODEL"]:
            try:
                unload(client, name)
            except ResponseError as exc:
                if "not found" not in str(exc).lower():
                    err(f"Warning: unable to stop model '{name}'")
            client.delete(name)
            out(f"deleted '{name}'")
    return 0


def cmd_stop(args: dict[str, Any]) -> int:
    name = args["MODEL"]
    with Client() as client:
        try:
            unload(client, name)
        except ResponseError as exc:
            if exc.status_code == 404 or "not found" in str(exc).lower():
                raise CommandError(f'couldn\'t find model "{name}" to stop') from exc
            raise
    return 0


def cmd_show(args: dict[str, Any]) -> int:
    flags = [
        flag
        for flag in ("license", "modelfile", "parameters", "system", "template")
        if args[f"--{flag}"]
    ]
    if len(flags) > 1:
        raise CommandError(
            "only one of '--license', '--modelfile', '--parameters', '--system', "
            "or '--template' can be specified"
        )
    with Client() as client:
        info = client.show(args["MODEL"], verbose=args["--verbose"])
    if not flags:
        out(display.show_summary(info, verbose=args["--verbose"]), end="")
        return 0
    value = info.get(flags[0]) or ""
    if isinstance(value, list):
        value = "\n".join(value)
    if flags[0] in ("system", "template"):
        out(value, end="")
    else:
        out(value)
    return 0


def cmd_version(args: dict[str, Any]) -> int:
    try:
        with Client() as client:
            server_version = client.version()
    except (ConnectionError, httpx.HTTPError, ResponseError):
        server_version = ""
        out("Warning: could not connect to a running power instance")
    if server_version:
        out(f"power version is {server_version}")
    if server_version != __version__:
        out(f"Warning: client version is {__version__}")
    return 0


def cmd_help(args: dict[str, Any]) -> int:
    name = args["COMMAND"]
    if not name:
        out(TOP_USAGE, end="")
        return 0
    command = COMMANDS.get(ALIASES.get(name, name))
    if command is None:
        err(f"Error: unknown command '{name}' for 'power'")
        return 1
    out(command.usage, end="")
    return 0


# ---------------------------------------------------------------- registry transfers


def cmd_pull(args: dict[str, Any]) -> int:
    with Client() as client:
        pull_with_progress(client, args["MODEL"], args["--insecure"])
    return 0


def cmd_push(args: dict[str, Any]) -> int:
    name = args["MODEL"]
    with Client() as client:
        progress = Progress()
        tracker = ProgressTracker(progress, verb="pushing")
        try:
            for chunk in client.push(name, insecure=args["--insecure"], stream=True):
                tracker.feed(chunk)
        finally:
            progress.stop()
    out("\nYou can find your model at:\n")
    out(f"\t{name}")
    return 0


def cmd_update(args: dict[str, Any]) -> int:
    """Pull each named model again (every local model when none is named).

    A pull fetches the registry's manifest and only the blobs the store lacks, so an unchanged
    model costs one manifest request. A named model that fails is an error (exit 1); when
    updating every model, one that cannot be pulled (e.g. created locally) is skipped.
    """
    explicit = bool(args["MODEL"])
    with Client() as client:
        names = args["MODEL"] or [
            m.get("name") or m.get("model") for m in client.list().get("models") or []
        ]
        n_failed = 0
        for name in names:
            err(f"updating '{name}'")
            try:
                pull_with_progress(client, name, args["--insecure"])
            except (ResponseError, httpx.HTTPError) as exc:
                if explicit:
                    n_failed += 1
                    err(f"Error: {exc}")
                else:
                    err(f"skipping '{name}': {exc}")
    return 1 if n_failed else 0


# ---------------------------------------------------------------- create


def _resolve_path(value: str, base: Path) -> Path | None:
    """The file or folder that a FROM/ADAPTER value names, if it names one that exists."""
    path = Path(os.path.expanduser(value))
    if not path.is_absolute():
        path = base / path
    return path.resolve() if path.exists() else None


def _upload(client: Client, progress: Progress, path: Path) -> str:
    spinner = progress.spinner(f"copying file {path.name} 0%")

    def report(sent: int, total: int) -> None:
        spinner.message = f"copying file {path.name} {100 * sent // max(total, 1)}%"

    digest = client.create_blob(path, progress=report)
    spinner.message = f"copying file {digest} 100%"
    spinner.stop()
    return digest


def build_create_request(
    client: Client, progress: Progress, modelfile: Modelfile, base: Path
) -> dict[str, Any]:
    """The /api/create fields for a parsed Modelfile (paths relative to `base`).

    FROM a GGUF file uploads it as a blob (`files`), and so does FROM a folder of GGUF files
    (a model and its vision projector, as Ollama's client does); FROM a folder of safetensors
    sends its absolute path in `from` (the server converts it); anything else is a model name
    sent in `from` (a GGUF file beside it, a projector, is added to that model). ADAPTER files
    are uploaded into `adapters`. DRAFT a GGUF file uploads it into `draft_files` (Ollama's
    field); DRAFT a folder is sent as an absolute path and anything else as a model name, both
    in `draft` (power's extension).
    """
    from power.registry.modelfile import gguf_files_in_folder

    request: dict[str, Any] = {}
    for source in modelfile.sources:
        path = _resolve_path(source, base)
        if path is not None and path.is_file():
            request.setdefault("files", {})[path.name] = _upload(client, progress, path)
        elif path is not None and path.is_dir() and gguf_files_in_folder(path):
            for file in gguf_files_in_folder(path):
                request.setdefault("files", {})[file.name] = _upload(client, progress, file)
        elif path is not None and path.is_dir():
            request.setdefault("from", str(path))
        else:
            request.setdefault("from", source)
    for adapter in modelfile.adapters:
        path = _resolve_path(adapter, base)
        if path is None or not path.is_file():
            raise CommandError(f"adapter file not found: {adapter}")
        request.setdefault("adapters", {})[path.name] = _upload(client, progress, path)
    if modelfile.draft is not None:
        path = _resolve_path(modelfile.draft, base)
        if path is not None and path.is_file():
            request["draft_files"] = {path.name: _upload(client, progress, path)}
        else:
            request["draft"] = str(path) if path is not None else modelfile.draft
    for key in ("renderer", "parser", "requires"):
        if getattr(modelfile, key) is not None:
            request[key] = getattr(modelfile, key)
    if modelfile.template is not None:
        request["template"] = modelfile.template
    if modelfile.system is not None:
        request["system"] = modelfile.system
    if modelfile.license:
        request["license"] = (
            modelfile.license[0] if len(modelfile.license) == 1 else list(modelfile.license)
        )
    if modelfile.parameters:
        request["parameters"] = dict(modelfile.parameters)
    if modelfile.messages:
        request["messages"] = [{"role": m.role, "content": m.content} for m in modelfile.messages]
    return request


def cmd_create(args: dict[str, Any]) -> int:
    from power.registry.modelfile import ModelfileError, parse_modelfile
    from power.registry.names import ModelName

    name = args["MODEL"]
    if not ModelName.is_valid(name):
        raise CommandError(f"invalid model name: {name}")
    if args["--file"]:
        path = Path(args["--file"]).expanduser().resolve()
        if not path.is_file():
            raise CommandError("specified Modelfile wasn't found")
        text = path.read_text(encoding="utf-8")
    else:
        path = Path("Modelfile").resolve()
        text = path.read_text(encoding="utf-8") if path.is_file() else "FROM .\n"
    try:
        modelfile = parse_modelfile(text)
    except ModelfileError as exc:
        raise CommandError(f"parsing Modelfile {path}: {exc}") from exc
    with Client() as client:
        progress = Progress()
        try:
            progress.spinner("gathering model components")
            request = build_create_request(client, progress, modelfile, path.parent)
            if args["--quantize"]:
                request["quantize"] = args["--quantize"]
            tracker = ProgressTracker(progress, verb="creating")
            for chunk in client.create(name, stream=True, **request):
                tracker.feed(chunk)
        finally:
            progress.stop()
    return 0


def cmd_run(args: dict[str, Any]) -> int:
    """One answer (a prompt given or piped, or an embedding model), else the chat session."""
    from power.cli import run  # deferred: only `run` needs the chat code
    from power.cli.interactive import ChatSession

    settings = run.settings_from_args(args)
    piped = run.read_piped_stdin()
    prompts = [*args["PROMPT"]]
    if args.get("--prompt"):
        prompts.append(args["--prompt"])
    if piped:
        prompts.insert(0, piped)
    prompt = " ".join(prompts)
    interactive = not prompts and not piped and sys.stdin.isatty() and sys.stdout.isatty()
    with Client() as client:
        info = run.show_or_pull(client, settings.model, bool(args.get("--insecure")))
        run.apply_show(settings, info)
        capabilities = info.get("capabilities") or []
        if "embedding" in capabilities and "completion" not in capabilities:
            return run.embed_once(client, settings, prompt)
        if not interactive:
            run.generate_once(client, settings, prompt)
            return 0
        run.load_model(client, settings)
        for message in settings.loaded_messages:
            if message.get("role") == "user":
                out(f">>> {message.get('content', '')}")
            elif message.get("role") == "assistant":
                out(run.answer_printer(settings).wrapper.feed(message.get("content", "")) + "\n")
        if settings.system:
            settings.messages.append({"role": "system", "content": settings.system})
        return ChatSession(client, settings).loop()


# ---------------------------------------------------------------- dispatch


class Command:
    def __init__(self, usage: str, handler: Callable[[dict[str, Any]], int]) -> None:
        self.usage = usage
        self.handler = handler


COMMANDS: dict[str, Command] = {
    "serve": Command(SERVE_USAGE, cmd_serve),
    "create": Command(CREATE_USAGE, cmd_create),
    "show": Command(SHOW_USAGE, cmd_show),
    "run": Command(RUN_USAGE, cmd_run),
    "stop": Command(STOP_USAGE, cmd_stop),
    "pull": Command(PULL_USAGE, cmd_pull),
    "push": Command(PUSH_USAGE, cmd_push),
    "list": Command(LIST_USAGE, cmd_list),
    "ps": Command(PS_USAGE, cmd_ps),
    "cp": Command(CP_USAGE, cmd_cp),
    "rm": Command(RM_USAGE, cmd_rm),
    "update": Command(UPDATE_USAGE, cmd_update),
    "version": Command(VERSION_USAGE, cmd_version),
    "rpc-worker": Command(RPC_WORKER_USAGE, cmd_rpc_worker),
    "help": Command(HELP_USAGE, cmd_help),
}
ALIASES = {"ls": "list", "delete": "rm", "start": "serve"}


def _normalise_run_argv(argv: list[str]) -> list[str]:
    """docopt has no optional option values: a bare `--think` means `--think=true`."""
    return ["--think=true" if arg == "--think" else arg for arg in argv]


def _parse(usage: str, argv: Sequence[str], options_first: bool = False) -> dict[str, Any] | int:
    """docopt's result, or an exit status when it printed help (0) or a usage error (1)."""
    try:
        return dict(docopt(usage, list(argv), default_help=True, options_first=options_first))
    except DocoptExit:
        unknown = _unknown_flags(usage, argv)
        if unknown:
            err(f"Error: unknown flag: {unknown[0]}\n")
        err(_usage_section(usage))
        return 1
    except SystemExit as exc:  # --help: docopt printed the text
        return 0 if exc.code in (None, 0) else 1


def _unknown_flags(usage: str, argv: Sequence[str]) -> list[str]:
    known = set(re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", usage))
    unknown = []
    for arg in argv:
        if arg == "--":
            break
        flag = arg.split("=", 1)[0]
        if flag.startswith("-") and len(flag) > 1 and not flag[1:].isdigit() and flag not in known:
            unknown.append(flag)
    return unknown


def _usage_section(usage: str) -> str:
    start = usage.lower().find("usage:")
    section = usage[start:].split("\n\n", 1)[0]
    return section.rstrip()


def main(argv: list[str] | None = None) -> int:
    """Run the CLI with `argv` (default: sys.argv[1:]); returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv:
        out(TOP_USAGE, end="")
        return 0
    top = _parse(TOP_USAGE, argv, options_first=True)
    if isinstance(top, int):
        return top
    if top.get("--version"):
        return cmd_version({})
    name = ALIASES.get(argv[0], argv[0])
    command = COMMANDS.get(name)
    if command is None:
        err(f"Error: unknown command '{argv[0]}' for 'power'\n")
        err(_usage_section(TOP_USAGE))
        return 1
    rest = argv[1:]
    if name == "run":
        rest = _normalise_run_argv(rest)
    args = _parse(command.usage, [name, *rest])
    if isinstance(args, int):
        return args
    try:
        return command.handler(args)
    except KeyboardInterrupt:
        sys.stderr.write("\n")
        return 130
    except (CommandError, ResponseError, ConnectionError) as exc:
        err(f"Error: {exc}")
    except httpx.HTTPError as exc:
        err(f"Error: {exc or type(exc).__name__}")
    except OSError as exc:
        err(f"Error: {exc.strerror or exc}: {exc.filename}" if exc.filename else f"Error: {exc}")
    except Exception as exc:  # the CLI never shows a traceback
        err(f"Error: {exc or type(exc).__name__}")
    return 1
