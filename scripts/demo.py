"""Import the demo model `gemma3:270m` into the store, offline, for `make serve`.

The gemma-3-270m GGUF is a base model without a chat template; the Modelfile below gives it
Gemma's turn format so that `power run gemma3:270m` and /api/chat work. The store is the one
`power serve` uses (POWER_MODELS, else OLLAMA_MODELS, else ~/.ollama/models). An existing
`gemma3:270m` is left alone.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import models  # noqa: E402  (scripts/models.py)

from power.registry.models import import_gguf  # noqa: E402
from power.registry.names import ModelName  # noqa: E402
from power.registry.store import Store  # noqa: E402

NAME = "gemma3:270m"

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

PARAMETERS = {"stop": ["<end_of_turn>"], "temperature": 1.0, "top_k": 64, "top_p": 0.95}


def main() -> int:
    store = Store.from_env()
    if store.read_manifest(ModelName.parse(NAME)) is not None:
        print(f"{NAME} is already in {store.root}")
        return 0
    path = models.gemma()
    import_gguf(store, NAME, path, template=GEMMA_TEMPLATE, parameters=PARAMETERS)
    print(f"imported {NAME} into {store.root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
