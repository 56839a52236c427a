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


class SettingError(ValueError):
    """An environment variable (or the `serve` flag that sets it) holds an unusable value."""


def parse_rpc_servers(text: str | None) -> tuple[str, ...]:
    """`host:port,host:port` (POWER_RPC_SERVERS) → a tuple of endpoints (empty for None or "");
    raises SettingError.

    ggml splits an endpoint at its first colon and resolves the host with gethostbyname: IPv4
    addresses and names only, no IPv6 literals.
    """
    if not text or not text.strip():
        return ()
    endpoints = []
    for part in text.split(","):
        item = part.strip()
        if not item:
            continue
        host, sep, port = item.rpartition(":")
        if not sep or not host or ":" in host or "[" in host:
            raise SettingError(f"invalid RPC server {item!r}: expected host:port (IPv4 or a name)")
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise SettingError(f"invalid port in RPC server {item!r}")
        endpoints.append(f"{host}:{int(port)}")
    if len(set(endpoints)) != len(endpoints):
        raise SettingError(f"an RPC server is listed twice in {text!r}")
    return tuple(endpoints)


def parse_tensor_split(text: str | None, n_servers: int | None = None) -> tuple[float, ...]:
    """`1,2,2` (POWER_TENSOR_SPLIT) → weights: this machine first, then each of `n_servers` RPC
    servers (missing ones count 1, one too many is an error); empty for None or ""."""
    if not text or not text.strip():
        return ()
    try:
        weights = tuple(float(w) for w in text.replace("/", ",").split(",") if w.strip())
    except ValueError:
        raise SettingError(
            f"invalid tensor split {text!r}: expected numbers such as 1,1,2"
        ) from None
    if any(w < 0 or w != w for w in weights) or not any(w > 0 for w in weights):
        raise SettingError(f"invalid tensor split {text!r}: weights must be >= 0, one of them > 0")
    if n_servers is not None and len(weights) > 1 + n_servers:
        raise SettingError(
            f"tensor split {text!r} has {len(weights)} weights for this machine and "
            f"{n_servers} RPC servers"
        )
    return weights


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

        _, host, port = parse_host(env("HOST"))
        keep_alive = parse_keep_alive(env("KEEP_ALIVE", "5m"))
        flash = env("FLASH_ATTENTION")
        rpc_servers = parse_rpc_servers(os.environ.get("POWER_RPC_SERVERS"))
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
            rpc_servers=rpc_servers,
            tensor_split=parse_tensor_split(os.environ.get("POWER_TENSOR_SPLIT"), len(rpc_servers)),
        )
