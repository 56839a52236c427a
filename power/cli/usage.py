"""The usage texts of every `power` command: each is the command's documentation
(`power help COMMAND`, `power COMMAND --help`) and, through docopt-ng, its parser."""

from __future__ import annotations

TOP_USAGE = """\
power: run large language models locally (a drop-in replacement for Ollama).

Usage:
  power <command> [<args>...]
  power -v | --version
  power -h | --help

Commands:
  serve       Start the power server
  create      Create a model from a Modelfile
  show        Show information for a model
  run         Run a model
  stop        Stop a running model
  pull        Pull a model from a registry
  push        Push a model to a registry
  list, ls    List models
  ps          List running models
  cp          Copy a model
  rm, delete  Remove models
  update      Pull the latest version of models
  version     Show the client and server versions
  rpc-worker  Serve this machine's CPU or GPUs to other servers (ggml RPC)
  help        Show help for a command

Options:
  -h, --help     Show this help
  -v, --version  Show version information

Environment:
  POWER_HOST     Address of the server (also read from OLLAMA_HOST; default 127.0.0.1:11434)
  POWER_API_KEY  Bearer token sent with every request

Run 'power help COMMAND' for more information on a command.
"""

SERVE_USAGE = """\
Start the power server.

Usage:
  power serve [options]

Options:
  --rpc=SERVERS           Also place model layers on these RPC workers (host:port,...),
                          as POWER_RPC_SERVERS does; see `power help rpc-worker`
  --tensor-split=WEIGHTS  Weights of this machine and of each RPC worker, in order
                          (e.g. 1,2,2), as POWER_TENSOR_SPLIT does; default: equal shares
  -h, --help              Show this help

Environment (each also read under its OLLAMA_ name):
  POWER_HOST               Address to listen on (default 127.0.0.1:11434)
  POWER_MODELS             Path of the model store
  POWER_KEEP_ALIVE         How long a model stays loaded when idle (default 5m)
  POWER_NUM_PARALLEL       Sequences decoded together per model
  POWER_MAX_LOADED_MODELS  Most models loaded at once
  POWER_MAX_QUEUE          Most requests waiting (default 512)
  POWER_CONTEXT_LENGTH     Default context length
  POWER_FLASH_ATTENTION    Use flash attention
  POWER_KV_CACHE_TYPE      Type of the K/V cache
  POWER_ORIGINS            Allowed origins (CORS)
  POWER_NOPRUNE            Keep unused blobs
  POWER_DEBUG              Verbose logs
  POWER_RPC_SERVERS        RPC workers that hold layers of every model (power only)
  POWER_TENSOR_SPLIT       Weights of this machine and each RPC worker (power only)
"""

RPC_WORKER_USAGE = """\
Serve this machine's CPU (or its GPUs) to other power servers, or to llama.cpp (--rpc), over
ggml's RPC protocol: interoperable with llama.cpp's rpc-server.

Usage:
  power rpc-worker [options]

Options:
  --host=HOST     IPv4 address to listen on [default: 127.0.0.1]
  --port=PORT     Port to listen on [default: 50052]
  --threads=N     CPU threads for computing (default: all cores)
  --mem=BYTES     Memory to advertise to clients, e.g. 8G (default: what the device reports);
                  clients given no tensor split divide layers by it
  --device=NAMES  Devices to serve, comma-separated (default: the GPUs, else the CPU)
  --cache         Cache large tensors on disk (~/.cache/power/rpc) for faster reloads
  -h, --help      Show this help

The RPC protocol has NO authentication and NO encryption: whoever reaches the port can run
computations on this machine and read its memory. It listens on loopback unless told otherwise;
serve a private network only (--host 10.0.0.5), never an open one. One client is served at a
time. On the server: POWER_RPC_SERVERS=10.0.0.5:50052,10.0.0.6:50052 power serve
(or power serve --rpc ...). SIGTERM or SIGINT stops the worker at once.
"""

CREATE_USAGE = """\
Create a model from a Modelfile.

Usage:
  power create [options] MODEL

Options:
  -f FILE, --file=FILE          Path of the Modelfile (default: ./Modelfile)
  -q QUANT, --quantize=QUANT    Quantize the model to this type (e.g. q4_K_M)
  -h, --help                    Show this help

FROM may name a model, a GGUF file (uploaded to the server as a blob) or a folder of
safetensors (converted by the server, which must run on this machine).
"""

SHOW_USAGE = """\
Show information for a model.

Usage:
  power show [options] MODEL

Options:
  --license      Show the license of the model
  --modelfile    Show the Modelfile of the model
  --parameters   Show the parameters of the model
  --system       Show the system message of the model
  --template     Show the prompt template of the model
  -v, --verbose  Show detailed model information
  -h, --help     Show this help
"""

RUN_USAGE = """\
Run a model. With a prompt (arguments, --prompt or piped input) it answers once and exits;
without one, on a terminal, it starts an interactive chat.

Usage:
  power run [options] MODEL [PROMPT...]

Options:
  --prompt=TEXT           Prompt text (added after the PROMPT words)
  --system=TEXT           System message
  --template=TEXT         Prompt template, in place of the model's
  --format=FORMAT         Response format: json, or a JSON schema (text or path of a file)
  --temperature=FLOAT     Sampling temperature
  --top-p=FLOAT           Keep the most likely tokens up to this probability mass
  --top-k=INT             Keep the K most likely tokens
  --num-predict=INT       Most tokens to generate
  --num-ctx=INT           Context window size
  --repeat-penalty=FLOAT  Penalty for repeated tokens
  --seed=INT              Random seed
  --keep-alive=DURATION   How long the model stays loaded (e.g. 5m, 0, -1)
  --keepalive=DURATION    Same as --keep-alive
  --think=LEVEL           Thinking: true, false, high, medium, low or max (bare: true)
  --hidethinking          Hide the thinking output
  --verbose               Show timings for the response
  --insecure              Use an insecure registry when the model must be pulled
  --nowordwrap            Don't wrap words to the next line automatically
  -h, --help              Show this help

Environment:
  POWER_HOST       Address of the server
  POWER_NOHISTORY  Don't keep the chat input history
"""

STOP_USAGE = """\
Stop a running model (unload it from memory).

Usage:
  power stop [options] MODEL

Options:
  -h, --help  Show this help
"""

PULL_USAGE = """\
Pull a model from a registry.

Usage:
  power pull [options] MODEL

Options:
  --insecure  Use an insecure registry (plain http)
  -h, --help  Show this help
"""

PUSH_USAGE = """\
Push a model to a registry.

Usage:
  power push [options] MODEL

Options:
  --insecure  Use an insecure registry (plain http)
  -h, --help  Show this help
"""

LIST_USAGE = """\
List models (those whose name starts with PREFIX, if given).

Usage:
  power list [options] [PREFIX]

Options:
  -h, --help  Show this help
"""

PS_USAGE = """\
List running models.

Usage:
  power ps [options] [PREFIX]

Options:
  -h, --help  Show this help
"""

CP_USAGE = """\
Copy a model.

Usage:
  power cp [options] SOURCE DESTINATION

Options:
  -h, --help  Show this help
"""

RM_USAGE = """\
Remove models.

Usage:
  power rm [options] MODEL...

Options:
  -h, --help  Show this help
"""

UPDATE_USAGE = """\
Pull the latest version of models from their registries (all local models if none named).

Usage:
  power update [options] [MODEL...]

Options:
  --insecure  Use an insecure registry (plain http)
  -h, --help  Show this help
"""

VERSION_USAGE = """\
Show the version of this client and of the server.

Usage:
  power version [options]

Options:
  -h, --help  Show this help
"""

HELP_USAGE = """\
Show help for a command.

Usage:
  power help [COMMAND]
"""
