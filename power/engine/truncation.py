"""Vectorised truncation samplers over one row of candidate logits, exact without a full sort.

Every function takes `logits`, a 1-D float array of the current candidates (the whole vocabulary,
262,144 entries for gemma, or a few already-truncated survivors), and returns the positions
(indices into `logits`) that survive, or `None` for "all of them". They never modify `logits`.
The definitions are llama.cpp's (tail-free sampling as it had it before removing it), with
`min_keep = 1`:

- `top_k_positions`: the k largest logits.
- `tail_free_positions`: sort probabilities descending, take the absolute second differences,
  normalise them, keep the tokens before the first index i >= 1 where their running sum exceeds z.
- `typical_positions`: order tokens by |surprise - entropy| and keep the shortest such prefix whose
  probability mass exceeds p.
- `top_p_positions`: the shortest descending prefix whose mass reaches p.
- `min_p_positions`: the tokens whose probability is at least p times the largest.
- `mirostat_v1_positions` / `mirostat_v2_positions`: Mirostat's truncation for the current mu.

Cost: an argsort of the whole vocabulary costs 3 ms a row here (llama.cpp's own typical and
Mirostat samplers 17-20 ms), so on large inputs each function first finds a set that provably
holds its answer with a few cheap whole-row passes (a compare, a masked sum: ~0.05-0.1 ms each),
then sorts only that set, by value where it can (numpy's value sort is 5x faster than argsort).
Results are exact (up to float rounding), except tail-free sampling: its normalising sum leaves
out the second differences of tokens far below the maximum once their bound (4 exp(-gap)) is
below `TFS_TOLERANCE` of the sum, which is about llama.cpp's own float32 precision.
"""

from __future__ import annotations

import math

import numpy as np

from power.engine.types import SamplingError

#: Inputs up to this size are handled by a plain sort; above it, the threshold ladders are used.
SMALL = 2048
#: Logit gaps below the maximum tried, in order, when looking for a head set.
GAP_LADDER = (4.0, 8.0, 16.0, 32.0)
#: Tail-free sampling: the head used to estimate the normalising sum, and the accepted bound
#: on the part of that sum left out, relative to it.
TFS_MIN_GAP = 8.0
TFS_TOLERANCE = 1e-5
#: Mirostat v1 estimates the Zipf exponent over this many most probable tokens.
MIROSTAT_M = 100


def _head(logits: np.ndarray, maximum: float, gap: float) -> np.ndarray:
    """Positions whose logit is at least `maximum - gap`."""
    return np.flatnonzero(logits >= maximum - gap)


def weights(logits: np.ndarray) -> tuple[np.ndarray, float, float]:
    """`(w, total, maximum)` with `w = exp(logits - maximum)`; probabilities are `w / total`."""
    maximum = float(logits.max())
    if logits.size > SMALL:
        w = np.exp(logits - np.float32(maximum))
    else:
        w = np.exp(logits.astype(np.float64) - maximum)
    return w, float(w.sum(dtype=np.float64)), maximum


def softmax(logits: np.ndarray) -> np.ndarray:
    """Probabilities of `logits` (float64; float32 above `SMALL` entries)."""
    maximum = float(logits.max())
    if logits.size > SMALL:  # float32 keeps the big arrays small (and allocation cheap)
        w = np.exp(logits - np.float32(maximum))
        w *= np.float32(1.0 / w.sum(dtype=np.float64))
        return w
    w = np.exp(logits.astype(np.float64) - maximum)
    return w / w.sum()


def draw_index(probs: np.ndarray, uniform: float) -> int:
    """The index that the uniform number `uniform` in [0, 1) picks from `probs` (inverse CDF,
    never a zero-probability entry). Large inputs are scanned in blocks, not cumsum'd whole.
    Raises SamplingError when no entry has a positive, finite probability."""
    if probs.size == 0 or not float(probs.max()) > 0.0:
        raise SamplingError("no token has a positive probability")
    if probs.size <= SMALL:
        cumulative = np.cumsum(probs, dtype=np.float64)
        offset = 0
    else:
        block = 1024
        sums = np.add.reduceat(probs, np.arange(0, probs.size, block), dtype=np.float64)
        block_cumulative = np.cumsum(sums)
        target = uniform * block_cumulative[-1]
        i_block = min(int(np.searchsorted(block_cumulative, target, side="right")), sums.size - 1)
        before = float(block_cumulative[i_block - 1]) if i_block else 0.0
        offset = i_block * block
        cumulative = before + np.cumsum(probs[offset : offset + block], dtype=np.float64)
        index = int(np.searchsorted(cumulative, target, side="right"))
        if index < cumulative.size:
            return offset + index
        return int(np.flatnonzero(probs > 0)[-1])
    target = uniform * cumulative[-1]
    index = int(np.searchsorted(cumulative, target, side="right"))
    if index < cumulative.size:
        return offset + index
    return int(np.flatnonzero(probs > 0)[-1])


def _select_top(logits: np.ndarray, n_keep: int, threshold: float) -> np.ndarray:
    """Exactly `n_keep` positions of the largest logits, given that `threshold` is the
    n_keep-th largest value; ties at the threshold go to the lowest positions (a stable sort)."""
    above = np.flatnonzero(logits > threshold)
    if above.size >= n_keep:
        return above[:n_keep]
    equal = np.flatnonzero(logits == threshold)[: n_keep - above.size]
    return np.concatenate([above, equal])


def top_k_positions(logits: np.ndarray, k: int) -> np.ndarray | None:
    """The positions of the `k` largest logits (in no order); None when k <= 0 or k >= size."""
    n = logits.size
    if k <= 0 or k >= n:
        return None
    head = None
    if n > SMALL:
        maximum = float(logits.max())
        for gap in GAP_LADDER:
            inside = logits >= maximum - gap
            n_inside = int(np.count_nonzero(inside))
            if n_inside >= k:
                if n_inside <= n // 2:  # else gathering costs more than it saves
                    head = np.flatnonzero(inside)
                break
    values = logits if head is None else logits[head]
    threshold = np.partition(values, values.size - k)[values.size - k]
    kept = _select_top(values, k, threshold)
    return kept if head is None else head[kept]


def min_p_positions(logits: np.ndarray, p: float) -> np.ndarray | None:
    """Tokens whose probability is at least `p` times the most probable one's."""
    if p <= 0.0 or logits.size <= 1:
        return None
    return np.flatnonzero(logits >= float(logits.max()) + math.log(p))


def top_p_positions(logits: np.ndarray, p: float) -> np.ndarray | None:
    """The shortest prefix, by decreasing probability, whose mass reaches `p`."""
    if p >= 1.0 or logits.size <= 1:
        return None
    w, total, maximum = weights(logits)
    target = p * total
    head = None
    if logits.size > SMALL:
        for gap in GAP_LADDER:
            head = _head(logits, maximum, gap)
            if float(w[head].sum(dtype=np.float64)) >= target:
                break
        else:
            head = None
    values = logits if head is None else logits[head]
    descending = np.sort(values)[::-1]
    cumulative = np.cumsum(np.exp(descending.astype(np.float64) - maximum))
    n_keep = min(int(np.searchsorted(cumulative, target, side="left")) + 1, values.size)
    kept = _select_top(values, n_keep, descending[n_keep - 1])
    return kept if head is None else head[kept]


def typical_positions(logits: np.ndarray, p: float) -> np.ndarray | None:
    """Locally typical sampling: keep the tokens whose surprise is closest to the entropy until
    their mass exceeds `p`."""
    if p >= 1.0 or logits.size <= 1:
        return None
    w, total, maximum = weights(logits)
    # surprise_i = log(total) + maximum - logit_i ; entropy = log(total) - E[logit - maximum]
    entropy = math.log(total) - float(np.dot(w, logits - np.float32(maximum))) / total
    center = maximum + math.log(total) - entropy  # the logit whose surprise equals the entropy
    distance = np.abs(logits - np.float32(center))
    target = p * total
    if logits.size <= SMALL:
        order = np.argsort(distance, kind="stable")
        cumulative = np.cumsum(w[order], dtype=np.float64)
        n_keep = min(int(np.searchsorted(cumulative, target, side="right")) + 1, order.size)
        return order[:n_keep]

    # Find radii lo < hi with mass(distance <= lo) <= target < mass(distance <= hi), narrow
    # them by bisection, then sort only the tokens in between.
    def mass_within(radius: float) -> float:
        return float(w[distance <= radius].sum(dtype=np.float64))

    low, high = 0.0, 0.5
    while mass_within(high) <= target:
        low, high = high, high * 2.0
        if high > 1e4:
            high = math.inf
            break
    for _ in range(12):
        if math.isinf(high) or np.count_nonzero((distance > low) & (distance <= high)) <= SMALL:
            break
        middle = (low + high) / 2.0
        if mass_within(middle) > target:
            high = middle
        else:
            low = middle
    inner = np.flatnonzero(distance <= low) if low > 0 else np.flatnonzero(distance <= 0)
    band = np.flatnonzero((distance > low) & (distance <= high))
    band = band[np.argsort(distance[band], kind="stable")]
    cumulative = float(w[inner].sum(dtype=np.float64)) + np.cumsum(w[band], dtype=np.float64)
    n_keep = min(int(np.searchsorted(cumulative, target, side="right")) + 1, band.size)
    return np.concatenate([inner, band[:n_keep]])


def _second_differences(descending: np.ndarray, maximum: float) -> np.ndarray:
    """|second differences| of the weights exp(value - maximum) of descending values."""
    w = np.exp(descending.astype(np.float64) - maximum)
    first = w[:-1] - w[1:]
    return np.abs(first[:-1] - first[1:])


def tail_free_positions(logits: np.ndarray, z: float) -> np.ndarray | None:
    """Tail-free sampling with parameter `z`."""
    if z >= 1.0 or logits.size <= 2:
        return None
    maximum = float(logits.max())
    values = logits
    if logits.size > SMALL:
        # The sum of |second differences| is set by the head; past a gap g below the maximum
        # the tail adds at most 4 exp(-g), so pick g to make that TFS_TOLERANCE of the sum.
        small = logits[logits >= maximum - TFS_MIN_GAP]
        if small.size < 64:  # a very confident row: estimate from the top 64 instead
            small = logits[top_k_positions(logits, 64)]
        estimate = float(_second_differences(np.sort(small)[::-1], maximum).sum())
        gap = math.log(4.0 / (TFS_TOLERANCE * estimate)) if estimate > 0 else math.inf
        gap = max(gap, TFS_MIN_GAP)
        values = logits[logits >= maximum - gap]
    descending = np.sort(values)[::-1]
    second = _second_differences(descending, maximum)
    normaliser = float(second.sum())
    # llama.cpp normalises unless the sum, in probabilities, is below 1e-6
    if normaliser <= 1e-6 * logits.size:
        total = float(np.exp(logits - np.float32(maximum)).sum(dtype=np.float64))
        if normaliser / total <= 1e-6:
            second = np.full(second.size, normaliser / max(second.size, 1))
    if normaliser > 0:
        cumulative = np.cumsum(second) / normaliser
    else:
        cumulative = np.arange(1, second.size + 1) / second.size
    above = np.flatnonzero(cumulative[1:] > z)  # the index must be >= min_keep = 1
    n_keep = int(above[0]) + 1 if above.size else descending.size
    return _select_top(logits, n_keep, descending[n_keep - 1])


def mirostat_v2_positions(logits: np.ndarray, mu: float) -> np.ndarray:
    """Tokens whose surprise -log2(p) is at most `mu` (the most probable one if none)."""
    _, total, maximum = weights(logits)
    threshold = maximum + math.log(total) - mu * math.log(2.0)
    kept = np.flatnonzero(logits >= threshold)
    if kept.size == 0:
        kept = np.array([int(np.argmax(logits))])
    return kept


def mirostat_v1_positions(logits: np.ndarray, mu: float, n_vocab: int) -> np.ndarray | None:
    """Mirostat v1: estimate the Zipf exponent s over the top `MIROSTAT_M` tokens, derive k from
    it and `mu`, and keep the top k."""
    head = top_k_positions(logits, MIROSTAT_M)
    top = np.sort(logits if head is None else logits[head])[::-1].astype(np.float64)
    if top.size < 2:
        return None
    n = min(MIROSTAT_M - 1, top.size - 1)
    t = np.log(np.arange(2, n + 2) / np.arange(1, n + 1))
    b = top[:n] - top[1 : n + 1]  # log(p_i / p_i+1)
    s_hat = float(np.dot(t, b) / np.dot(t, t))
    epsilon = s_hat - 1.0
    log_n = math.log(n_vocab)
    if abs(epsilon) < 1e-12:
        ratio = 1.0 / log_n
    else:
        ratio = epsilon / -math.expm1(-epsilon * log_n)
    try:
        k = (ratio * 2.0**mu) ** (1.0 / s_hat) if s_hat > 0 else math.inf
    except OverflowError:
        k = math.inf
    if not math.isfinite(k) or k >= logits.size:
        return None
    return top_k_positions(logits, max(int(k), 1))
