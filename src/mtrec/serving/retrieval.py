"""Retrieval: which items a ranking scores, every one (exact) or the candidates of an HNSW graph.

A ranking asks for the items of largest inner product with a query: the watch score
``p = u·q + a + b`` is one after augmenting the vectors, the user's ``[u, 1]`` against the item's
``[q, b]`` (the user's constant ``a`` changes no order; :func:`watch_space`), in every sharing mode,
since each has one user and one item vector for the likelihood head; the rating head's bias never
enters ``p``. Cosine similarity is one between unit item vectors.

Two indexes answer "the ``n`` items of largest inner product" behind one interface
(:class:`ItemIndex`):

``exact``
    Scores every item. A :class:`~mtrec.serving.recommender.Recommender` with it ranks as it always has.
``hnsw``
    A graph of the items (HNSW, Malkov & Yashunin 2018, from the optional extra faiss:
    ``pip install "mtrec[ann]"``) searched in time that grows with the log of the catalogue. An
    inner product becomes a distance by one more coordinate (Bachrach et al. 2014): an item ``x``
    is stored as ``[x, sqrt(R² − |x|²)]``, ``R`` the largest item norm, and a query ``y`` as
    ``[y, 0]``, so ``|x' − y'|² = R² + |y|² − 2 x·y`` and the nearest items are those of largest
    inner product. HNSW finds neighbours in a metric space far better than it ranks raw inner
    products. Its build parameters (:class:`IndexConfig`): ``m`` links per item and layer (twice as
    many in the bottom one; memory is about ``4·(d + 2) + 8·m`` bytes an item), ``ef_construction``
    candidates kept while an item is inserted, ``ef_search`` while a query is answered (at least the
    number of candidates asked for; by default :data:`EF_PER_DIMENSION` times the graph's dimension,
    since vectors of more dimensions need a wider search for the same recall). More of each finds the
    true neighbours more often, and costs time.
``auto``
    ``exact`` below :data:`AUTO_ITEMS` items (100,000), where scoring everything is as fast as
    searching the graph, else ``hnsw`` (``exact``, with a warning, where faiss is not installed).

The graph never decides what is recommended, only what is scored (:func:`ranked_candidates`): it
proposes candidates, which are re-scored exactly by the network, and the user's seen items and the
filters are applied to them. The user's seen items are left out inside the search (an ID selector of
faiss: the search walks through them but never returns them), so the graph is asked for ``k +``
:data:`MARGIN` items divided by the share of the catalogue the filters let through, however long the
history (asking for the seen items' count more made a search of a long history several times
slower). A user left with fewer than ``k`` items is asked again with :data:`GROWTH` times as many, and
once that and the seen items reach every item the filters allow, those items themselves are the
candidates, so a list is as long as with ``exact``. The watch score of a pick counts the items that outscore it among those
scored (the candidates and the seen items): the exact count whenever the graph found every item that
scores at least as high, which is what recall measures.

The graph of a model loaded from a file is saved beside it (``model.watch.hnsw``,
``model.similar.hnsw``), verified like the model file: a SHA-256 over its contents, the digest of
the model file it was built from, and its build parameters. One that does not match (another model,
other parameters, a damaged file) is rebuilt and replaced, with a warning saying why. A graph built
on several threads may differ from one build to the next (and so may a few lists it finds); a saved
one gives the same answers at every load.
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
import warnings
from pathlib import Path
from typing import Callable, Iterator, Literal, Protocol

import numpy as np
import torch
from pydantic import Field

from mtrec.errors import ConfigError
from mtrec.eval.ranking import MASKED, count_at_or_above, count_at_or_above_sorted, top_k, top_k_indices
from mtrec.io.checkpoint import MODEL_FILENAME, model_digest
from mtrec.io.files import atomic_output
from mtrec.io.schemas import Schema, validate
from mtrec.nn.network import MultitaskNet

#: The spaces a model's items are searched in: by watch score, and by cosine similarity.
SPACES = ("watch", "similar")
#: ``auto`` searches a graph from this many items on. Measured (``benchmarks/retrieval.py``, one
#: thread, d = 32): a request that scores every item takes 0.65 ms at 59,047 items and 10.8 ms at
#: 1,000,000, growing linearly; one through the graph 0.68 ms and 0.99 ms. They cross near here;
#: below it exact is as fast, needs no build and is exact.
AUTO_ITEMS = 100_000
#: The default ``ef_search`` per dimension of the graph (d + 2 for the watch space): 272 at d = 32 and
#: 1,040 at d = 128, where recall@10 was 0.988 and 0.989 on 1,000,000 items (``benchmarks/retrieval.py``;
#: 6 per dimension gave 0.983 and 0.983, with median requests 12× and 30× faster than exact).
EF_PER_DIMENSION = 8
#: Candidates asked for beyond ``k`` (before the filters' share is applied).
MARGIN = 16
#: How many times more candidates a user short of ``k`` items is asked for next.
GROWTH = 4
#: Bytes one candidate of a batch takes while it is ranked (keys, scores, sort orders, flags).
BYTES_PER_CANDIDATE = 160
#: Candidates re-scored at once: bounds the memory of the vectors they gather.
SCORE_PAIRS = 1 << 15
#: How to get the extra that holds the graph.
EXTRA = 'pip install "mtrec[ann]" (or pip install faiss-cpu)'
INDEX_FORMAT = "mtrec-index"
INDEX_FORMAT_VERSION = 1
#: The files the graphs of a run directory's model are saved in.
INDEX_FILENAMES = tuple(f"{Path(MODEL_FILENAME).stem}.{space}.hnsw" for space in SPACES)


class IndexConfig(Schema):
    """Which index ranks items, and the HNSW graph's build and search parameters (see the module)."""

    kind: Literal["auto", "exact", "hnsw"] = "auto"
    m: int = Field(32, ge=4, le=256)
    ef_construction: int = Field(100, ge=8, le=4096)
    ef_search: int | None = Field(None, ge=8, le=65536)

    @classmethod
    def of(cls, **values) -> IndexConfig:
        """A config from keyword values; a value that is not allowed is a :class:`ConfigError` naming it."""
        return validate(cls, values, ConfigError, "index")

    def resolve(self, num_items: int) -> str:
        """``"exact"`` or ``"hnsw"`` for a catalogue of ``num_items``; ``hnsw`` without faiss is a :class:`ConfigError`."""
        if self.kind == "hnsw":
            _faiss()
            return "hnsw"
        if self.kind == "exact" or num_items < AUTO_ITEMS:
            return "exact"
        try:
            _faiss()
        except ConfigError:
            warnings.warn(f"{num_items:,} items would be ranked faster by an HNSW index, but faiss is not installed: {EXTRA}")
            return "exact"
        return "hnsw"

    def build_parameters(self) -> dict[str, int]:
        """What a saved graph must have been built with to be used."""
        return {"m": self.m, "ef_construction": self.ef_construction}


def _faiss():
    try:
        import faiss
    except ImportError:
        raise ConfigError(f"an HNSW index (--index hnsw) needs faiss, an optional extra: {EXTRA}") from None
    return faiss


class ItemIndex(Protocol):
    """The items of largest inner product with each query. ``exhaustive``: it scores every item."""

    exhaustive: bool

    def search(self, queries: torch.Tensor, n: int, exclude: list[np.ndarray] | None = None) -> torch.Tensor:
        """Item indices, shape ``(len(queries), n)``, best first; -1 where fewer were found.
        ``exclude``: per query, item indices never to return (int64)."""
        ...


class ExactIndex:
    """Every item scored: the true top ``n``."""

    exhaustive = True

    def __init__(self, vectors: torch.Tensor) -> None:
        self.vectors = vectors

    def search(self, queries: torch.Tensor, n: int, exclude: list[np.ndarray] | None = None) -> torch.Tensor:
        seen = None
        if exclude is not None:
            rows = np.repeat(np.arange(len(exclude)), [len(items) for items in exclude])
            seen = (torch.from_numpy(rows), torch.from_numpy(np.concatenate([[], *exclude]).astype(np.int64)))
        top_scores, top = top_k(queries @ self.vectors.T, min(n, len(self.vectors)), seen, inplace=True)
        top = top.masked_fill(top_scores == MASKED, -1)
        return torch.nn.functional.pad(top, (0, n - top.shape[1]), value=-1)


class HnswIndex:
    """An HNSW graph of the items (faiss), searched for the largest inner products (see the module)."""

    exhaustive = False

    def __init__(self, graph, ef_search: int | None) -> None:
        self.graph, self.ef_search = graph, ef_search or EF_PER_DIMENSION * graph.d

    @classmethod
    def build(cls, vectors: torch.Tensor, config: IndexConfig) -> HnswIndex:
        """The graph of ``vectors`` (one row per item), built on the process's PyTorch threads."""
        faiss = _faiss()
        rows = vectors.detach().float().cpu()
        norms = rows.norm(dim=1)
        lift = (norms.max() ** 2 - norms**2).clamp(min=0).sqrt()
        graph = faiss.IndexHNSWFlat(rows.shape[1] + 1, config.m)
        graph.hnsw.efConstruction = config.ef_construction
        faiss.omp_set_num_threads(torch.get_num_threads())
        graph.add(np.ascontiguousarray(torch.cat([rows, lift[:, None]], 1).numpy()))
        return cls(graph, config.ef_search)

    def search(self, queries: torch.Tensor, n: int, exclude: list[np.ndarray] | None = None) -> torch.Tensor:
        faiss = _faiss()
        lifted = np.ascontiguousarray(torch.nn.functional.pad(queries.detach().float().cpu(), (0, 1)).numpy())
        faiss.omp_set_num_threads(torch.get_num_threads())
        ef_search = max(self.ef_search, n)
        if exclude is None or not any(len(items) for items in exclude):
            _, found = self.graph.search(lifted, n, params=faiss.SearchParametersHNSW(efSearch=ef_search))
            return torch.from_numpy(found).to(queries.device)
        found = np.empty((len(lifted), n), dtype=np.int64)
        for row, items in enumerate(exclude):  # a selector per query: one search each
            items = np.ascontiguousarray(items, dtype=np.int64)
            members = faiss.IDSelectorBatch(len(items), faiss.swig_ptr(items))  # held: the selector below points to it
            left_out = faiss.IDSelectorNot(members)
            params = faiss.SearchParametersHNSW(efSearch=ef_search, sel=left_out)
            found[row] = self.graph.search(lifted[row : row + 1], n, params=params)[1][0]
        return torch.from_numpy(found).to(queries.device)

    def to_array(self) -> np.ndarray:
        return _faiss().serialize_index(self.graph)

    @classmethod
    def from_array(cls, payload: np.ndarray, ef_search: int | None) -> HnswIndex:
        return cls(_faiss().deserialize_index(payload), ef_search)


def watch_space(network: MultitaskNet) -> torch.Tensor:
    """The items as ``[q, b]``: with :func:`watch_queries`' ``[u, 1]``, ``p = [u, 1]·[q, b] + a``."""
    return torch.cat([network.item_vectors(), network.item_bias().unsqueeze(1)], 1).detach()


def watch_queries(network: MultitaskNet, users: torch.Tensor) -> torch.Tensor:
    """The users' ``[u, 1]`` (see :func:`watch_space`)."""
    u = network.watch_users(users)
    return torch.cat([u, torch.ones_like(u[:, :1])], 1)


def watch_scores(network: MultitaskNet, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    """The watch score ``p = u·q + a + b`` of each user's row of ``items`` (shape ``(len(users), n)``),
    as :meth:`~mtrec.nn.network.MultitaskNet.watch_score` gives it pair by pair, each user's vector read once."""
    u, q = network.watch_users(users), network.watch_items(items)
    biases = network.item_bias(items.reshape(-1)).view(items.shape)
    return (q @ u[:, :, None]).squeeze(-1) + network.user_bias(users).unsqueeze(1) + biases


class Retrieval:
    """The indexes a recommender ranks with, one per space of :data:`SPACES`, each built (or read from
    beside the model file) on first use; safe to share between threads.

    Parameters
    ----------
    config:
        The index to use and its parameters.
    num_items:
        The size of the catalogue (``auto`` chooses by it).
    spaces:
        Per space, a function giving its item vectors (called only to build).
    model_file:
        The model file the network was read from, beside which the graphs are saved; None for a
        model in memory (and a file that records no digest): its graphs are never saved.
    """

    def __init__(self, config: IndexConfig, num_items: int, spaces: dict[str, Callable[[], torch.Tensor]], model_file: Path | None = None) -> None:
        self.config, self.kind = config, config.resolve(num_items)
        self._spaces, self._model_file = spaces, model_file
        self._indexes: dict[str, ItemIndex] = {}
        self._lock = threading.Lock()

    @property
    def exhaustive(self) -> bool:
        """Whether every item is scored (the exact index)."""
        return self.kind == "exact"

    def index(self, space: str) -> ItemIndex:
        """The index of ``space``, built or read on first use."""
        with self._lock:
            if space not in self._indexes:
                self._indexes[space] = self._make(space)
            return self._indexes[space]

    def warm(self) -> None:
        """Build (or read) every space's graph now, e.g. before a service answers its first request."""
        if not self.exhaustive:
            for space in self._spaces:
                self.index(space)

    def _make(self, space: str) -> ItemIndex:
        vectors = self._spaces[space]
        if self.exhaustive:
            return ExactIndex(vectors())
        digest = None if self._model_file is None else model_digest(self._model_file)
        if digest is None:  # a model in memory, or a file without a digest to tie a graph to
            return HnswIndex.build(vectors(), self.config)
        path = self._model_file.with_name(f"{self._model_file.stem}.{space}.hnsw")
        index, flaw = read_index(path, space, self.config, digest)
        if index is not None:
            return index
        index = HnswIndex.build(vectors(), self.config)
        if flaw:
            warnings.warn(f"{path} {flaw}: rebuilt it")
        try:
            save_index(index, path, space, self.config, digest)
        except OSError as error:
            warnings.warn(f"cannot save the {space} index to {path} ({error.strerror or error}): it is built again at each load")
        return index


def _index_digest(graph: np.ndarray, metadata: dict[str, str]) -> str:
    sha = hashlib.sha256(memoryview(np.ascontiguousarray(graph)).cast("B"))
    for key in sorted(metadata):
        sha.update(f"{key}={metadata[key]}".encode())
    return sha.hexdigest()


def save_index(index: HnswIndex, path: Path, space: str, config: IndexConfig, model_sha256: str) -> None:
    """Write ``index`` atomically to ``path``, with what :func:`read_index` verifies."""
    from safetensors.numpy import save_file

    graph = index.to_array()
    metadata = {
        "format": INDEX_FORMAT,
        "format_version": str(INDEX_FORMAT_VERSION),
        "space": space,
        "model_sha256": model_sha256,
        "build": json.dumps(config.build_parameters(), sort_keys=True),
    }
    metadata["sha256"] = _index_digest(graph, metadata)
    with atomic_output(path) as temporary:
        save_file({"graph": graph}, str(temporary), metadata=metadata)


def read_index(path: Path, space: str, config: IndexConfig, model_sha256: str) -> tuple[HnswIndex | None, str | None]:
    """The graph saved at ``path`` if it is the one for this model, space and config; else None and
    why it is not (None too when there is no file)."""
    from safetensors import SafetensorError, safe_open

    if not path.exists():
        return None, None
    try:
        with safe_open(str(path), framework="np") as handle:
            metadata, graph = dict(handle.metadata() or {}), handle.get_tensor("graph")
    except (OSError, SafetensorError, ValueError, KeyError) as error:
        return None, f"is not a readable index ({error})"
    if metadata.get("format") != INDEX_FORMAT or metadata.get("format_version") != str(INDEX_FORMAT_VERSION):
        return None, f"is not an index of format {INDEX_FORMAT} version {INDEX_FORMAT_VERSION}"
    if metadata.pop("sha256", None) != _index_digest(graph, metadata):
        return None, "failed its integrity check (the file was modified or damaged)"
    if metadata.get("space") != space:
        return None, f"is an index of the {metadata.get('space')} space, not the {space} space"
    if metadata.get("model_sha256") != model_sha256:
        built = metadata.get("model_sha256") or "unknown"
        return None, f"was built from another model (sha256 {built[:12]}…, this model's is {model_sha256[:12]}…)"
    wanted = json.dumps(config.build_parameters(), sort_keys=True)
    if metadata.get("build") != wanted:
        return None, f"was built with {metadata.get('build')}, not {wanted}"
    try:
        return HnswIndex.from_array(graph, config.ef_search), None
    except RuntimeError as error:
        return None, f"is not a readable index ({str(error).splitlines()[0]})"


def ranked_candidates(
    index: ItemIndex,
    queries: torch.Tensor,
    score: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    k: int,
    num_items: int,
    seen: tuple[torch.Tensor, torch.Tensor] | None = None,
    allowed: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The top ``k`` items of each query among the candidates ``index`` proposes, re-scored exactly.

    ``score(rows, items)`` gives the exact scores of each row's items (``rows`` of the queries,
    ``items`` one row of item indices per row, scores of the same shape); ``seen`` (rows,
    items; distinct per row) are left out of the lists but counted; ``allowed`` (a mask over the
    items) filters them. How many candidates are asked for, and when again, is said in the module's
    docstring.

    Returns the picks' scores, shape ``(len(queries), k)`` (-inf past the end of a shorter list),
    their items, and per pick how many of the scored items score at least as high.
    """
    rows_total, device = len(queries), queries.device
    none = torch.zeros(0, dtype=torch.long, device=device)
    seen_rows, seen_items = seen if seen is not None else (none, none)
    allowed_items = None if allowed is None else torch.nonzero(allowed).view(-1)
    available = num_items if allowed_items is None else len(allowed_items)
    if rows_total == 1 and device.type == "cpu":
        return _ranked_one(index, queries, score, k, num_items, seen_items, allowed, allowed_items, available)
    seen_keys = torch.sort(seen_rows * num_items + seen_items).values
    seen_counts = torch.bincount(seen_rows, minlength=rows_total)
    seen_of = _per_row(seen_keys, num_items, rows_total)
    fetch = torch.full((rows_total,), _first_fetch(k, num_items, available), dtype=torch.long, device=device)
    top_p = torch.full((rows_total, k), float("-inf"), device=device)
    top_items = torch.zeros((rows_total, k), dtype=torch.long, device=device)
    above = torch.zeros((rows_total, k), dtype=torch.long, device=device)
    pending = torch.arange(rows_total, device=device)
    while len(pending):
        groups = _candidate_groups(index, queries, pending, fetch[pending], seen_counts[pending], seen_of, allowed_items, available)
        for rows, candidates in groups:
            own = (seen_rows, seen_items)
            if len(rows) < rows_total:
                mine = torch.zeros(rows_total, dtype=torch.bool, device=device)
                mine[rows] = True
                own = (seen_rows[mine[seen_rows]], seen_items[mine[seen_rows]])
            top_p[rows], top_items[rows], above[rows] = _top_of_candidates(rows, candidates, score, k, num_items, seen_keys, own, allowed)
        short = (torch.isfinite(top_p[pending, -1]).logical_not()) & (fetch[pending] + seen_counts[pending] < available)
        fetch[pending[short]] *= GROWTH
        pending = pending[short]
    return top_p, top_items, above


def _ranked_one(
    index: ItemIndex,
    query: torch.Tensor,
    score: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    k: int,
    num_items: int,
    seen_items: torch.Tensor,
    allowed: torch.Tensor | None,
    allowed_items: torch.Tensor | None,
    available: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`ranked_candidates` of one query on the CPU: the same candidates, picks and counts, in
    NumPy, with a tenth of the operations of the batch path (a single request is mostly their overhead)."""
    seen = np.sort(seen_items.numpy())
    allowed_mask = None if allowed is None else allowed.numpy()
    fetch = _first_fetch(k, num_items, available)
    while True:
        if fetch + len(seen) >= available:
            candidates = np.arange(num_items) if allowed_items is None else allowed_items.numpy()
        else:
            candidates = index.search(query, _search_size(fetch, available), [seen])[0].numpy()
            candidates = candidates[candidates >= 0]
        scored = score(torch.zeros(1, dtype=torch.long), torch.from_numpy(np.concatenate([candidates, seen]))[None])
        p, seen_p = np.split(scored.view(-1).numpy(), [len(candidates)])
        counted = np.ones(len(candidates), dtype=bool)
        if len(seen):
            counted = seen[np.searchsorted(seen, candidates).clip(max=len(seen) - 1)] != candidates
        eligible = np.flatnonzero(counted if allowed_mask is None else counted & allowed_mask[candidates])
        if len(eligible) >= k or fetch + len(seen) >= available:
            break
        fetch *= GROWTH
    picks = eligible[top_k_indices(p[eligible], k)]
    top_p = np.full(k, -np.inf, dtype=np.float32)
    top_items, above = np.zeros(k, dtype=np.int64), np.zeros(k, dtype=np.int64)
    top_p[: len(picks)], top_items[: len(picks)] = p[picks], candidates[picks]
    above[: len(picks)] = count_at_or_above_sorted(np.sort(np.concatenate([p[counted], seen_p])), p[picks])
    return tuple(torch.from_numpy(array[None]) for array in (top_p, top_items, above))


def _first_fetch(k: int, num_items: int, available: int) -> int:
    """Candidates first asked for (the seen items left out): ``k +`` :data:`MARGIN` over the share of items allowed."""
    return math.ceil((k + MARGIN) * num_items / max(available, 1))


def bytes_per_query(k: int, num_items: int, allowed: torch.Tensor | None, seen: float) -> int:
    """About the memory one query of a batch takes in :func:`ranked_candidates`, with ``seen`` items
    on average: for sizing a batch."""
    available = num_items if allowed is None else int(allowed.sum())
    return BYTES_PER_CANDIDATE * (min(_first_fetch(k, num_items, available), available) + 2 * math.ceil(seen))


def _candidate_groups(
    index: ItemIndex,
    queries: torch.Tensor,
    rows: torch.Tensor,
    fetch: torch.Tensor,
    seen_counts: torch.Tensor,
    seen_of: Callable[[int], np.ndarray],
    allowed_items: torch.Tensor | None,
    available: int,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Groups of rows and their candidates, shape ``(len(rows), n)`` (-1 where none): every allowed
    item for rows whose ``fetch`` and seen items reach ``available``, else ``index``'s, the row's seen
    items (``seen_of(row)``) left out, searched together for rows asking for the same power of two."""
    every = fetch + seen_counts >= available
    if bool(every.any()):
        items = allowed_items if allowed_items is not None else torch.arange(available, device=queries.device)
        yield rows[every], items.expand(int(every.sum()), len(items))
    searched, wanted = rows[~every], fetch[~every]
    if not len(searched):
        return
    sizes = torch.exp2(torch.ceil(torch.log2(wanted.double()))).long().clamp(max=available)
    for size in torch.unique(sizes).tolist():
        group = searched[sizes == size]
        yield group, index.search(queries[group], size, [seen_of(row) for row in group.tolist()])


def _search_size(fetch: int, available: int) -> int:
    """The power of two at or above ``fetch``, at most ``available``: sizes searched together."""
    return min(1 << (fetch - 1).bit_length(), available)


def _per_row(seen_keys: torch.Tensor, num_items: int, rows: int) -> Callable[[int], np.ndarray]:
    """A function giving each row's seen items (int64, ascending) from the sorted keys ``row * num_items + item``."""
    keys = seen_keys.cpu().numpy()
    bounds = np.searchsorted(keys, np.arange(rows + 1) * num_items)
    return lambda row: keys[bounds[row] : bounds[row + 1]] - row * num_items


def _top_of_candidates(
    rows: torch.Tensor,
    candidates: torch.Tensor,
    score: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    k: int,
    num_items: int,
    seen_keys: torch.Tensor,
    seen: tuple[torch.Tensor, torch.Tensor],
    allowed: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The top ``k`` eligible ``candidates`` of each of ``rows`` (-inf past a short list), their
    items, and per pick how many candidates and seen items score at least as high.

    A candidate is eligible when it is not seen (its key ``row * num_items + item`` is not in the
    sorted ``seen_keys``) and ``allowed``. The seen candidates are counted among the ``seen``
    pairs (those of ``rows``), so each item is counted once.
    """
    valid = candidates >= 0
    items = candidates.clamp(min=0)
    count, width = items.shape
    p = _scored(score, rows, items)
    seen_p = _scored(score, seen[0], seen[1][:, None]).view(-1)
    counted = valid
    if len(seen_keys):
        keys = rows[:, None] * num_items + items
        found = seen_keys[torch.searchsorted(seen_keys, keys).clamp(max=len(seen_keys) - 1)]
        counted = valid & (found != keys)
    eligible = counted if allowed is None else counted & allowed[items]
    top_p, at = top_k(p, min(k, width), allowed=eligible)
    top_items = items.gather(1, at)
    if width < k:
        top_p = torch.nn.functional.pad(top_p, (0, k - width), value=float("-inf"))
        top_items = torch.nn.functional.pad(top_items, (0, k - width))
    # The seen pairs' rows, as positions among ``rows``.
    local = torch.zeros(int(rows.max()) + 1 if len(rows) else 0, dtype=torch.long, device=rows.device)
    local[rows] = torch.arange(count, device=rows.device)
    return top_p, top_items, count_at_or_above(top_p, p, counted, extra=(local[seen[0]], seen_p))


def _scored(score: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], rows: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    """``score`` of each row's items, about :data:`SCORE_PAIRS` pairs at a time."""
    step = max(1, SCORE_PAIRS // max(items.shape[1], 1))
    parts = [score(rows[start : start + step], items[start : start + step]) for start in range(0, len(rows), step)]
    return torch.cat(parts) if parts else items.new_zeros(items.shape, dtype=torch.float32)
