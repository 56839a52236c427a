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
| MAX_CONNECTIONS (POWER_) | 1024               | open connections; beyond, the longest-waiting  |
|                          |                    | idle one is closed (see power.http.connections)|
| HEADER_TIMEOUT (POWER_)  | 10s                | a request's first byte to its last header byte |
| BODY_TIMEOUT (POWER_)    | 60s                | longest silence while a request body arrives   |
| IDLE_TIMEOUT (POWER_)    | 120s               | a kept-alive connection with no request        |
| MAX_BLOB_BYTES (POWER_)  | unlimited          | largest /api/blobs upload (the disk's free     |
|                          |                    | space bounds it in any case)                   |
| PROMPT_CACHE_DIR (POWER_)| MODELS/prompt-cache| saved KV cells of prompt prefixes              |
| PROMPT_CACHE_SIZE        | 2G                 | bytes the prompt cache may take; 0 disables it |
|   (POWER_ only)          |                    | (least recently used files go first)           |
| PROMPT_CACHE_MIN_TOKENS  | 256                | shorter prefixes are not saved                 |
|   (POWER_ only)          |                    |                                                |
| REQUEST_LOG (POWER_ only)| 1                  | one log line per request; `0` turns it off     |
| NO_CLOUD                 | unset              | only reported by /api/status (power has no     |
|                          |                    | cloud: cloud is always disabled)               |
| SPECULATIVE (POWER_ only)| 1                  | 0 turns speculative decoding off (prompt       |
|                          |                    | lookup and DRAFT models), for every request    |

Durations are Go durations (`10s`, `2m`) or bare seconds; `0` or a negative one means "no limit".
"""

from __future__ import annotations

import ipaddress
import math
import os
from pathlib import Path
from urllib.parse import urlsplit

import attrs

DEFAULT_PORT = 11434
DEFAULT_PROMPT_CACHE_SIZE = 2 << 30


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


def is_loopback_address(host: str | None) -> bool:
    """Whether `host` (an IP address, bracketed or not, or `localhost`) is this machine's
    loopback. IPv4-mapped IPv6 addresses count by the IPv4 address they carry:
    `::ffff:127.0.0.1` is loopback (an IPv6 socket reports IPv4 clients that way)."""
    if not host:
        return False
    text = host.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    if text.lower() == "localhost":
        return True
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])  # drop an IPv6 zone
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


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
    max_connections: int = 1024
    header_timeout: float = 10.0
    body_timeout: float = 60.0
    idle_timeout: float = 120.0
    max_blob_bytes: int | None = None
    prompt_cache_dir: Path | None = None  # None: `models / "prompt-cache"`
    prompt_cache_size: int = DEFAULT_PROMPT_CACHE_SIZE
    prompt_cache_min_tokens: int = 256
    request_log: bool = True
    no_cloud_env: bool = False
    speculative: bool = True

    @property
    def prompt_cache_path(self) -> Path:
        """The prompt cache folder: beside the store's blobs and manifests, not inside."""
        return self.prompt_cache_dir or self.models / "prompt-cache"

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
            max_connections=max(1, int(os.environ.get("POWER_MAX_CONNECTIONS") or 1024)),
            header_timeout=_seconds("POWER_HEADER_TIMEOUT", 10.0),
            body_timeout=_seconds("POWER_BODY_TIMEOUT", 60.0),
            idle_timeout=_seconds("POWER_IDLE_TIMEOUT", 120.0),
            max_blob_bytes=_bytes("POWER_MAX_BLOB_BYTES"),
            prompt_cache_dir=_path("POWER_PROMPT_CACHE_DIR"),
            prompt_cache_size=_size("POWER_PROMPT_CACHE_SIZE", DEFAULT_PROMPT_CACHE_SIZE),
            prompt_cache_min_tokens=max(
                1, int(os.environ.get("POWER_PROMPT_CACHE_MIN_TOKENS") or 256)
            ),
            request_log=_flag_default_on("POWER_REQUEST_LOG"),
            no_cloud_env=env_flag("NO_CLOUD"),
            speculative=_flag_default_on("POWER_SPECULATIVE"),
        )


def _flag_default_on(variable: str) -> bool:
    """A flag that is on unless set to `0`, `false`, `no` or `off`."""
    value = (os.environ.get(variable) or "").strip().lower()
    return value not in ("0", "false", "no", "off")


def _seconds(variable: str, default: float) -> float:
    """A duration setting in seconds; `0` or negative: no limit (`math.inf`)."""
    from power.durations import parse_keep_alive

    value = os.environ.get(variable)
    if not value:
        return default
    try:
        seconds = parse_keep_alive(value)
    except ValueError as error:
        raise ValueError(f"{variable}: {error}") from None
    return math.inf if seconds is None or seconds <= 0 else seconds


_BYTE_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def _bytes(variable: str) -> int | None:
    """A size setting: bytes, or with a binary unit (`500M`, `20G`, `1TiB`); unset, `0` or
    negative: no limit (None)."""
    value = (os.environ.get(variable) or "").strip().lower().removesuffix("ib").removesuffix("b")
    if not value:
        return None
    number, unit = value.rstrip("kmgt"), value[len(value.rstrip("kmgt")) :]
    try:
        size = int(float(number) * _BYTE_UNITS[unit])
    except (KeyError, ValueError):
        raise ValueError(f"{variable}: expected a size like 500M or 20G, got {value!r}") from None
    return size if size > 0 else None


def _path(variable: str) -> Path | None:
    value = os.environ.get(variable)
    return Path(value).expanduser() if value else None


def _size(variable: str, default: int) -> int:
    """A size setting where `0` means "off": bytes or with a binary unit (`500M`, `2G`)."""
    value = (os.environ.get(variable) or "").strip()
    if not value:
        return default
    if value.lstrip("+-").replace(".", "", 1).isdigit() and float(value) <= 0:
        return 0
    return _bytes(variable) or 0
