"""Bring local models up to date with their registries (power's `update`; Ollama has none).

The contract of `update_models`:

- For each named model (every local model when `names` is None) it fetches the remote manifest
  and compares its sha256 with the sha256 of the local manifest file; only a model whose digests
  differ is pulled again (only the blobs the store lacks are fetched).
- Events: `{"status": "checking <name>"}` per model; for a changed model the pull events
  (`pulling <12 hex>` …, `verifying sha256 digest`, `writing manifest`); for an unchanged one
  `{"status": "<name> is up to date"}`; at the end `{"status": "success"}`.
- A model named explicitly that cannot be checked (no local manifest, not in the registry,
  unreachable) raises `RegistryError`. When updating every local model, such a model is skipped
  with `{"status": "skipping <name>: <reason>"}` (models created locally have no remote), and the
  others go on.
- Returns the display names of the models that were re-pulled, in the order checked.
- Blobs the old manifest used and the new one does not are removed when no other manifest
  references them (unless the store's `noprune` is set), as a pull that replaces a model does.
"""

from __future__ import annotations

from collections.abc import Callable

import httpx

from power.registry.names import ModelName
from power.registry.oci import RegistryClient, RegistryError, RetryPolicy, sha256_digest
from power.registry.pull import install_manifest
from power.registry.store import Store

Progress = Callable[[dict], None]


def _no_progress(_event: dict) -> None:
    pass


async def update_model(
    store: Store,
    name: ModelName,
    *,
    insecure: bool,
    progress: Progress,
    transport: httpx.AsyncBaseTransport | None,
    retry: RetryPolicy | None,
) -> bool:
    """Re-pull one model if its remote manifest differs; True when it was re-pulled."""
    local = store.read_manifest_bytes(name)
    if local is None:
        raise RegistryError(f"model '{name.display}' not found", 404)
    async with RegistryClient(name, insecure=insecure, transport=transport, retry=retry) as client:
        remote = await client.get_manifest(name.tag)
        if sha256_digest(remote) == sha256_digest(local):
            progress({"status": f"{name.display} is up to date"})
            return False
        await install_manifest(store, client, name, remote, progress)
    return True


async def update_models(
    store: Store,
    names: list[str] | list[ModelName] | None = None,
    *,
    insecure: bool = False,
    progress: Progress | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    retry: RetryPolicy | None = None,
) -> list[str]:
    """Re-pull the models in `names` (all local models when None) whose registry copy changed.

    See the module docstring. `transport` and `retry` are for tests.
    """
    progress = progress or _no_progress
    every_model = names is None
    if every_model:
        model_names = [stored.name for stored in store.list_models()]
    else:
        model_names = [
            text if isinstance(text, ModelName) else ModelName.parse(text) for text in names
        ]
    updated: list[str] = []
    for name in model_names:
        progress({"status": f"checking {name.display}"})
        try:
            changed = await update_model(
                store, name, insecure=insecure, progress=progress, transport=transport, retry=retry
            )
        except RegistryError as error:
            if not every_model:
                raise
            progress({"status": f"skipping {name.display}: {error.message}"})
            continue
        if changed:
            updated.append(name.display)
    progress({"status": "success"})
    return updated
