"""Server settings from the environment. Every setting reads `POWER_X` first, then `OLLAMA_X`.

| variable                 | default            | meaning                                        |
|--------------------------|--------------------|------------------------------------------------|
| HOST                     | 127.0.0.1:11434    | bind address of `serve`, address the CLI uses  |
| MODELS                   | ~/.ollama/models   | model store root (Ollama's layout)             |
| NUM_PARALLEL             | 4                  | sequences decoded together per loaded model    |
| MAX_LOADED_MODELS        | 3                  | models kept in memory at once                  |
| MAX_QUEUE                | 512                | requests waiting for a model before 503        |
| KEEP_ALIVE               | 5m                 | how long an idle model stays loaded            |
| CONTEXT_LENGTH           | 4096               | default num_ctx                                |
| FLASH_ATTENTION          | auto               | 1/0 forces flash attention on/off              |
| KV_CACHE_TYPE            | f16                | f16, q8_0, q4_0 …                              |
| ORIGINS                  | (none)             | extra CORS origins, comma-separated            |
| NOPRUNE                  | unset              | keep unreferenced blobs                        |
| DEBUG                    | unset              | verbose logs (llama.cpp's too)                 |
| API_KEY (POWER_ only)    | unset              | require `Authorization: Bearer KEY`            |
| NUM_THREAD (POWER_ only) | all cores          | default num_thread                             |
| RPC_SERVERS (POWER_ only)| unset              | RPC workers host:port,... that hold layers too |
| TENSOR_SPLIT (POWER_ only)| equal             | weights: this machine, then each RPC worker    |
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from urllib.parse import urlsplit

import attrs

DEFAULT_PORT = 11434


def env(name: str, default: str | None = None) -> str | None:
    """`POWER_<name>` if set (even empty), else `OLLAMA_<name>`, else `default`."""
    for prefix in ("POWER_", "OLLAMA_"):
        value = os.environ.get(prefix + name)
        if value is not None and value != "":
            return value
    return default


def env_flag(name: str) -> bool:
    value = env(name)
    return value is not None and value.strip().lower() not in ("", "0", "false", "no", "off")


def parse_host(value: str | None) -> tuple[str, str, int]:
    """`[scheme://]host[:port]` → (scheme, host, port), with Ollama's defaults."""
    if not value:
        return "http", "127.0.0.1", DEFAULT_PORT
    text = value.strip()
    if "://" not in text:
        text = "http://" + text
    parts = urlsplit(text)
    scheme = parts.scheme or "http"
    host = parts.hostname or "127.0.0.1"
    try:
        port = parts.port
    except ValueError:
        port = None
    if port is None:
        port = 443 if scheme == "https" else DEFAULT_PORT
    return scheme, host, port


def client_base_url() -> str:
    scheme, host, port = parse_host(env("HOST"))
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}:{port}"


def default_models_dir() -> Path:
    return Path.home() / ".ollama" / "models"


@attrs.frozen
class Settings:
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    models: Path = attrs.field(factory=default_models_dir)
    num_parallel: int = 4
    max_loaded_models: int = 3
    max_queue: int = 512
    keep_alive: float = 300.0
    context_length: int = 4096
    flash_attention: bool | None = None
    kv_cache_type: str = "f16"
    origins: tuple[str, ...] = ()
    noprune: bool = False
    debug: bool = False
    api_key: str | None = None
    num_thread: int = 0
    rpc_servers: tuple[str, ...] = ()
    tensor_split: tuple[float, ...] = ()

    @classmethod
    def from_env(cls) -> Settings:
        from power.durations import parse_keep_alive
        from power.engine.rpc import parse_endpoints, parse_tensor_split

        _, host, port = parse_host(env("HOST"))
        keep_alive = parse_keep_alive(env("KEEP_ALIVE", "5m"))
        flash = env("FLASH_ATTENTION")
        return cls(
            host=host,
            port=port,
            models=Path(env("MODELS") or default_models_dir()).expanduser(),
            num_parallel=max(1, int(env("NUM_PARALLEL", "4") or 4)),
            max_loaded_models=max(1, int(env("MAX_LOADED_MODELS", "3") or 3)),
            max_queue=max(1, int(env("MAX_QUEUE", "512") or 512)),
            keep_alive=math.inf if keep_alive is None else keep_alive,
            context_length=int(env("CONTEXT_LENGTH", "4096") or 4096),
            flash_attention=None if flash is None else env_flag("FLASH_ATTENTION"),
            kv_cache_type=(env("KV_CACHE_TYPE") or "f16").lower(),
            origins=tuple(o.strip() for o in (env("ORIGINS") or "").split(",") if o.strip()),
            noprune=env_flag("NOPRUNE"),
            debug=env_flag("DEBUG"),
            api_key=os.environ.get("POWER_API_KEY") or None,
            num_thread=int(os.environ.get("POWER_NUM_THREAD", "0") or 0),
            rpc_servers=parse_endpoints(os.environ.get("POWER_RPC_SERVERS")),
            tensor_split=parse_tensor_split(
                os.environ.get("POWER_TENSOR_SPLIT"),
                len(parse_endpoints(os.environ.get("POWER_RPC_SERVERS"))),
            ),
        )
