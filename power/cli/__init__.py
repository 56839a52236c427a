"""The `power` command line (docopt-ng): a client of the HTTP API, as Ollama's CLI is.

Layers, top down: `main` (usage dispatch, the simple commands, `run`'s choice between one answer
and the chat) → `interactive` (the chat session and its slash commands) → `run` (one-shot
answers, request settings, printing a streamed answer) → `common` (output, `CommandError`, a
pull with progress) → `progress`, `display`, `usage` (leaf modules).

May import: `power.client`, `power.options`, `power.durations`, `power.version`,
`power.registry.modelfile`/`names` (to read a Modelfile for `create`), `power.http.server`
for `serve` only and `power.engine.rpc` for `rpc-worker` only (a ggml RPC server, not an HTTP
client; both imported when that command runs). Nothing imports `power.cli` but `power.__main__`.
"""
