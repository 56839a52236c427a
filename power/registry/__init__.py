"""Ollama's model store and registry protocol: names, manifests, blobs, and what is built from them.

Contract: everything here works on a `store.Store` (a folder in Ollama's layout, byte for byte)
and answers with typed objects (attrs), never JSON for a client: `models.resolve` (a
`ResolvedModel` to run), `models.show`/`models.list_models` (`ModelShow`, `ModelEntry`),
`create.create_model` from the one `create.CreateRequest`, copy/delete, and over the OCI
distribution protocol `pull`, `push` and `update`. Store functions block on file I/O (run them
in a worker thread); pull/push are trio tasks that a cancellation stops cleanly (partial
downloads are kept and resumed). Errors: `store.ModelNotFoundError` (404),
`names.InvalidNameError` and `create.CreateError` (400), `store.StoreError` (500).

Several processes may share one store (replicas): `locks` (the store lock, sessions and pins,
flock-based) and `partial` (download files and locks) coordinate them; `store` uses both, and
`prune` cleans up after processes that died (`sweep`).

Modules: `names`, `manifest`, `locks`, `partial`, `sweep` → `store` (blobs, manifests,
pruning) → `gguf_meta` (GGUF headers), `modelfile` (parse and print), `local_paths` (the one
rule for `from` naming a path of this machine) → `create`, `models` (resolve, show, list, copy,
delete) → `resolve_cache` (resolved models per manifest file) → `oci` (the HTTP client) →
`pull`, `push`, `update`.

May import: `power.convert` (safetensors folders), `power.gotemplate` (Go's value printing for
`show`'s parameters), and the shared leaf modules (`power.messages`, `power.options`,
`power.config`, `power.version`). Never `power.http`, `power.engine`, `power.prompt` or `power.cli`: the JSON
of its results is written by `power.http.model_json`; llama.cpp is reached only for
quantization, through `llama_cpp` itself.
"""
