"""The production `Backend` (`LLAMA`): llama.cpp on this machine, or split over RPC workers.

`LlamaBackend.open(spec)` loads `spec` through `power.engine.llama.open_model`, unless
`spec.rpc_servers` names workers: then the model is split over those that answer now, its
llama.cpp model and context living in a host process of their own (`power.engine.split`), and
what comes back is the parent's vocabulary-only `LlamaModel` with a `SplitContext`. When no
worker answers, the model is loaded on this machine alone, as if none were configured.

A module of its own so that `power.engine.split` (which builds on `power.engine.llama`) and
`power.engine.llama` stay free of a cycle.
"""

from __future__ import annotations

from power.engine.backend import Context, Vocabulary
from power.engine.llama import LlamaModel, ModelLoadParams, open_model, open_projector
from power.engine.loadspec import LoadSpec
from power.engine.split import open_split


class LlamaBackend:
    """The production `Backend`: llama.cpp, locally or over RPC workers (see the module doc)."""

    def open(self, spec: LoadSpec) -> tuple[Vocabulary, Context]:
        """Load `spec` (blocking: call it from a worker thread). The caller owns the result."""
        if spec.rpc_servers:
            split = open_split(spec)  # None when no worker answers: load here alone
            if split is not None:
                return split
        return open_model(
            spec,
            ModelLoadParams(
                num_gpu=spec.num_gpu,
                main_gpu=spec.main_gpu,
                use_mmap=spec.use_mmap,
                use_mlock=spec.use_mlock,
                numa=spec.numa,
            ),
        )

    def open_projector(self, spec: LoadSpec, model: LlamaModel):  # -> LlamaProjector
        """Load `spec.projector_path` beside `model` (blocking)."""
        return open_projector(spec, model)


LLAMA = LlamaBackend()
