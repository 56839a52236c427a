"""Import the demo models into the store, offline, for `make serve`.

- `qwen2.5-coder:0.5b` (Qwen2.5-Coder-0.5B-Instruct): the model that chats. No TEMPLATE: power
  renders the Jinja chat template the GGUF carries (with its tools section), as for any GGUF
  imported without one, and stops at its end-of-turn token.
- `gemma3:270m` (a base model without a chat template): for completion (`/api/generate`); the
  Modelfile below gives it Gemma's turn format so that /api/chat works too, if not well.

The store is the one `power serve` uses (POWER_MODELS, else OLLAMA_MODELS, else
~/.ollama/models). A model already there is left alone. The GGUF files in `.models/` are hard-
linked into the store where the filesystem allows (no second copy of 750 MB), else copied.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import models  # noqa: E402  (scripts/models.py)

from power.registry.create import CreateRequest  # noqa: E402
from power.registry.models import create  # noqa: E402
from power.registry.names import ModelName  # noqa: E402
from power.registry.store import Store  # noqa: E402

GEMMA = "gemma3:270m"
QWEN = "qwen2.5-coder:0.5b"

GEMMA_TEMPLATE = """{{- $system := .System }}
{{- range $i, $m := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}
{{- if eq $m.Role "user" }}<start_of_turn>user
{{ if and $system (eq $i 0) }}{{ $system }}

{{ end }}{{ $m.Content }}<end_of_turn>
{{ if $last }}<start_of_turn>model
{{ end }}
{{- else if eq $m.Role "assistant" }}<start_of_turn>model
{{ $m.Content }}{{ if not $last }}<end_of_turn>
{{ end }}
{{- end }}
{{- end }}"""

GEMMA_PARAMETERS = {"stop": ["<end_of_turn>"], "temperature": 1.0, "top_k": 64, "top_p": 0.95}

#: name → (the GGUF file, the create request's template and parameters)
DEMO_MODELS: dict[str, tuple[Callable[[], Path], dict[str, Any]]] = {
    QWEN: (models.qwen, {}),
    GEMMA: (models.gemma, {"template": GEMMA_TEMPLATE, "parameters": GEMMA_PARAMETERS}),
}


def _add_blob(store: Store, path: Path) -> str:
    """`path` as a blob of `store`: hard-linked into the store's temporaries and moved into
    place (hashed on the way), or copied when the store is on another filesystem."""
    with tempfile.TemporaryDirectory(dir=store.temp_dir()) as folder:
        link = Path(folder) / path.name
        try:
            os.link(path, link)
        except OSError:
            return store.add_blob_file(path, move=False)
        return store.add_blob_file(link, move=True)


def import_demo_models(store: Store) -> list[str]:
    """Import every demo model `store` lacks; returns the names imported."""
    imported = []
    for name, (gguf, fields) in DEMO_MODELS.items():
        if store.read_manifest(ModelName.parse(name)) is not None:
            continue
        path = gguf()
        digest = _add_blob(store, path)
        create(store, CreateRequest(model=name, files={path.name: digest}, **fields))
        imported.append(name)
    return imported


def main() -> int:
    store = Store.from_env()
    imported = import_demo_models(store)
    for name in DEMO_MODELS:
        print(f"{name} {'imported into' if name in imported else 'is already in'} {store.root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
