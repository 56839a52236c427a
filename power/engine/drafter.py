"""A draft model (Modelfile `DRAFT`): a smaller model with the same vocabulary proposes the
draft tokens of speculative decoding instead of prompt lookup (`power.engine.speculative`).

`Drafter` owns the draft model's vocabulary and its own context, loaded beside the target's by
`LoadedModel.open` with the same number of sequences and cells per sequence: draft sequence s
mirrors target sequence s. Before each target step, `propose` (a worker thread, under the
model's limiter) brings each drafting sequence's draft cells in line with the target's cells
plus its next token (the common prefix is kept, the rest removed, what is missing evaluated in
one batch for every sequence), then decodes greedily, one token per sequence per decode, up to
each sequence's k. The draft tokens are the draft model's argmax: a draft that is certain,
which is what the target's verification assumes for sampled requests too.

The draft model's cost is not part of the adaptive draft length (`DraftPolicy` only counts the
target's verification): a Modelfile that names a draft model asks for it.

`vocabulary_mismatch(target, draft)` says why a draft model cannot serve a target (None when
it can): a different vocabulary size, end-of-generation or BOS tokens, or different bytes for
any of a sample of token ids spread over the vocabulary. `LoadedModel.open` refuses such a pair
with an `EngineError` (400).

Ownership: `close()` frees the draft context, then the draft weights (`LoadedModel.close`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import attrs
import numpy as np

from power.engine.backend import BatchEntry, Context, Vocabulary
from power.engine.scheduler import common_prefix

log = logging.getLogger(__name__)

#: Token ids compared between a target and its draft model.
N_SAMPLED_TOKENS = 512


def vocabulary_mismatch(target: Vocabulary, draft: Vocabulary) -> str | None:
    """Why `draft` cannot propose tokens for `target`, or None when their vocabularies agree."""
    if target.n_vocab != draft.n_vocab:
        return f"vocabulary sizes differ ({target.n_vocab} tokens vs {draft.n_vocab})"
    if sorted(target.eog_ids) != sorted(draft.eog_ids) or target.bos != draft.bos:
        return "special tokens (BOS, end of generation) differ"
    n = target.n_vocab
    step = max(1, n // N_SAMPLED_TOKENS)
    ids = sorted({*range(0, n, step), n - 1, *range(min(n, 256))})
    for token in ids:
        try:
            same = target.piece(token) == draft.piece(token)
        except Exception:  # noqa: BLE001 - a token one side cannot render: not the same
            same = False
        if not same:
            return f"token {token} differs"
    return None


@attrs.frozen
class DraftRequest:
    """Sequence `seq_id` holds `history` in the target (its cells and its next token); draft
    up to `k` tokens after it."""

    seq_id: int
    history: Sequence[int]
    k: int


class Drafter:
    """A draft model's vocabulary and context; see the module docstring."""

    def __init__(self, model: Vocabulary, context: Context) -> None:
        self.model = model
        self.context = context
        self.cached: dict[int, list[int]] = {}  # per sequence: the tokens in its draft cells

    def propose(self, requests: Sequence[DraftRequest]) -> dict[int, list[int]]:
        """Worker thread: the draft tokens of each request (blocking; raises what the draft
        context raises, the caller then goes on without drafts)."""
        drafts: dict[int, list[int]] = {r.seq_id: [] for r in requests if r.k > 0}
        live = [r for r in requests if r.k > 0 and len(r.history) < self.context.n_ctx_seq]
        pending: dict[int, list[int]] = {}
        for request in live:
            cached = self.cached.get(request.seq_id, [])
            # at least the last token is evaluated again: its logits are the first draft's
            n_keep = min(common_prefix(cached, list(request.history)), len(request.history) - 1)
            if n_keep < len(cached) and not self.context.seq_rm(request.seq_id, n_keep, -1):
                self.context.seq_rm(request.seq_id, -1, -1)
                n_keep = 0
            self.cached[request.seq_id] = list(request.history[:n_keep])
            pending[request.seq_id] = list(request.history[n_keep:])
        # catch up (prompts), n_batch tokens per decode, logits of each sequence's last token
        last_rows = self._catch_up(pending)
        feeding = {seq: int(np.argmax(self.context.logits_row(row))) for seq, row in last_rows}
        for seq, token in feeding.items():
            drafts[seq].append(token)
        by_seq = {r.seq_id: r for r in live}
        while True:
            entries = [
                BatchEntry(seq, [drafts[seq][-1]], len(self.cached[seq]), True)
                for seq in feeding
                if len(drafts[seq]) < by_seq[seq].k
                and len(self.cached[seq]) + 1 < self.context.n_ctx_seq
            ]
            if not entries:
                break
            self.context.decode_batch(entries)
            for row, entry in enumerate(entries):
                self.cached[entry.seq_id].append(entry.tokens[0])
                drafts[entry.seq_id].append(int(np.argmax(self.context.logits_row(row))))
        return drafts

    def _catch_up(self, pending: dict[int, list[int]]) -> list[tuple[int, int]]:
        """Evaluate each sequence's missing tokens; (seq, row of its last token) of the last
        decode that held each (every sequence finishes in the same last decode)."""
        n_batch = self.context.n_batch
        queue = {seq: tokens for seq, tokens in pending.items() if tokens}
        while True:
            total = sum(len(t) for t in queue.values())
            if total <= n_batch:
                break
            # decode the longest backlog's chunk alone, until everything fits one batch
            seq = max(queue, key=lambda s: len(queue[s]))
            chunk, queue[seq] = queue[seq][:n_batch], queue[seq][n_batch:]
            if not queue[seq]:  # cannot happen while total > n_batch, but keep the last token
                queue[seq], chunk = chunk[-1:], chunk[:-1]
            self.context.decode_batch([BatchEntry(seq, chunk, len(self.cached[seq]), False)])
            self.cached[seq].extend(chunk)
        entries, rows, n_rows = [], [], 0
        for seq, tokens in queue.items():
            entries.append(BatchEntry(seq, tokens, len(self.cached[seq]), True))
            n_rows += len(tokens)
            rows.append((seq, n_rows - 1))
        if entries:
            self.context.decode_batch(entries)
            for seq, tokens in queue.items():
                self.cached[seq].extend(tokens)
        return rows

    def forget(self, seq_id: int) -> None:
        """The target dropped this sequence's cells: drop the draft's too."""
        self.context.seq_rm(seq_id, -1, -1)
        self.cached.pop(seq_id, None)

    def close(self) -> None:
        self.context.close()
        self.model.close()
