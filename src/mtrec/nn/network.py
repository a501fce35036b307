"""The multi-task network: a factorisation head and a rating head on user and item embeddings.

:class:`RecommenderNetwork` is the contract that evaluation, recommendation and serving rely
on: indices in, one value per pair (or per user and item) out. Any ``nn.Module`` that keeps it
can be evaluated and served by mtrec, and trained by :class:`mtrec.train.steps.AutogradStep`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar, Literal, Protocol, Sequence, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn

from mtrec.errors import ConfigError
from mtrec.nn.itemitem import check_item_item
from mtrec.nn.layers import ScaledEmbedding, ZeroEmbedding
from mtrec.registry import Registry


@runtime_checkable
class RecommenderNetwork(Protocol):
    """What mtrec asks of a network. ``users`` and ``items`` are int64 index tensors."""

    def watch_score(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """The likelihood head's score p of each (user, item) pair, shape (len(users),)."""
        ...

    def rating(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """The rating head's prediction r_hat of each (user, item) pair, shape (len(users),)."""
        ...

    def all_watch_scores(self, users: torch.Tensor) -> torch.Tensor:
        """p of every item for each user, shape (len(users), num_items)."""
        ...

    def item_vectors(self) -> torch.Tensor:
        """The likelihood head's item vectors, shape (num_items, d): what "similar items" compares."""
        ...


#: The most values (entities x feature rows) a side's features are kept as a dense matrix; beyond, embedding_bag reads the bags.
MAX_DENSE_FEATURES = 2**24

#: Parameter groups a network may name for per-group weight decay; others fall in "mlp".
PARAMETER_GROUPS = ("embeddings", "residuals", "biases", "mlp")


@dataclass(frozen=True)
class Table:
    """One embedding table of a network, as the network declares it (:meth:`MultitaskNet.tables`).

    ``name`` is its attribute (its parameter is ``<name>.weight``), ``rows`` what indexes its rows
    (``"users"`` or ``"items"``), ``group`` its parameter group (:data:`PARAMETER_GROUPS`).
    """

    name: str
    rows: Literal["users", "items", "user_features", "item_features"]
    group: str


@dataclass(frozen=True)
class Head:
    """One head of a network, as the network declares it (:meth:`MultitaskNet.heads`).

    ``name`` is the head, ``task`` the task whose loss trains it (:mod:`mtrec.nn.tasks`),
    ``output`` the network's method that computes it for (users, items), ``tables`` the tables only
    it reads, and ``dense`` its other modules (in the ``mlp`` parameter group).
    """

    name: str
    task: str
    output: str
    tables: tuple[str, ...] = ()
    dense: tuple[str, ...] = ()


def check_architecture(embedding_dim: int, layer_sizes: Sequence[int]) -> list[int]:
    """Validate the rating MLP's layer sizes against the embedding dimension."""
    if isinstance(embedding_dim, bool) or not isinstance(embedding_dim, int) or embedding_dim <= 0:
        raise ConfigError(f"embedding_dim must be a positive integer, got {embedding_dim!r}")
    sizes = list(layer_sizes)
    if not sizes or any(isinstance(s, bool) or not isinstance(s, int) or s <= 0 for s in sizes):
        raise ConfigError(f"layer_sizes must be a non-empty list of positive integers, got {sizes!r}")
    if sizes[0] != 3 * embedding_dim:
        raise ConfigError(f"layer_sizes[0] must be 3 * embedding_dim = {3 * embedding_dim} (the MLP reads [u, q, u*q]), got layer_sizes={sizes}")
    return sizes


#: SplitMix64's constants, as signed int64 (torch's integer products wrap, as the algorithm wants).
_GOLDEN = -7046029254386353131  # 0x9E3779B97F4A7C15
_MIX_1 = -4658895280553007687  # 0xBF58476D1CE4E5B9
_MIX_2 = -7723592293110705685  # 0x94D049BB133111EB
_SEED_STRIDE = 0x632BE59BD9B4E019
_SIDE_STRIDE = 0x1000000000000


def _wrapped(value: int) -> int:
    """``value`` modulo 2**64, as a signed int64."""
    return (value + 2**63) % 2**64 - 2**63


def _uniform(key: torch.Tensor) -> torch.Tensor:
    """A number in [0, 1) per int64 key: SplitMix64's finaliser (a different key, an unrelated number)."""
    x = key ^ (key >> 30)
    x = x * torch.tensor(_MIX_1, dtype=torch.long, device=key.device)
    x = x ^ (x >> 27)
    x = x * torch.tensor(_MIX_2, dtype=torch.long, device=key.device)
    x = x ^ (x >> 31)
    return (x & ((1 << 53) - 1)).double() / float(1 << 53)


def _feature_sizes(features: dict | None) -> dict[str, int]:
    """``{"items": rows, "users": rows}`` of the sides with features (checked)."""
    sizes = {}
    for side, rows in (features or {}).items():
        if side not in ("items", "users"):
            raise ConfigError(f"features are for items or users, not {side!r}")
        if isinstance(rows, bool) or not isinstance(rows, int) or rows < 0:
            raise ConfigError(f"the {side[:-1]} feature rows must be a whole number, got {rows!r}")
        if rows:
            sizes[side] = rows
    return {side: sizes[side] for side in ("items", "users") if side in sizes}


def build_mlp(layer_sizes: Sequence[int]) -> nn.Sequential:
    """Linear layers of the given input sizes with ReLU between them, ending in one output."""
    sizes = [*layer_sizes, 1]
    layers: list[nn.Module] = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(fan_in, fan_out), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


class UserEncoder:
    """How the network turns user indices into the user vectors its heads read (sharing then mixes them).

    An encoder is registered in :data:`USER_ENCODERS`: :meth:`make` declares its tables with
    ``table(name, rows, group, kind, width)`` (as sharing modes do), :meth:`encode` gives the
    vectors of a batch of users. Its keyword options (:meth:`settings`) are part of the network's
    structure. ``summary`` is its line of help.
    """

    summary: ClassVar[str] = ""

    def make(self, net: MultitaskNet, table: Callable[..., None], embedding_dim: int) -> None:
        raise NotImplementedError

    def encode(self, net: MultitaskNet, users: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def settings(self) -> dict:
        """The options this encoder was made with (``USER_ENCODERS[name](**settings)`` makes it again)."""
        return {}

    def use_histories(self, net: MultitaskNet, indptr: torch.Tensor, indices: torch.Tensor) -> None:
        """Called when the network is given the users' training items (:meth:`MultitaskNet.use_histories`,
        which keeps them as ``net.history_indptr`` and ``net.history_indices``); most encoders ignore it."""


#: The user encoders by name (:mod:`mtrec.registry`).
USER_ENCODERS: Registry[type[UserEncoder]] = Registry("user encoder")


@USER_ENCODERS.register("id")
class IdEncoder(UserEncoder):
    """A learned vector per user id: the seed's U."""

    summary = "a learned vector per user id (the seed's U)"

    def make(self, net, table, embedding_dim):
        table("user_embeddings", "users", "embeddings", ScaledEmbedding, embedding_dim)

    def encode(self, net, users):
        return net.user_embeddings(users)


class Sharing:
    """How the two heads share the user and item embeddings: the tables (and parameters) a mode adds
    to the network, and the vectors each head reads. A mode is registered in :data:`SHARINGS`;
    ``summary`` is its line in ``--sharing``'s help. The base class is hard sharing: both heads read
    the network's U and Q."""

    summary: ClassVar[str] = ""

    def make(self, net: MultitaskNet, table: Callable[..., None], embedding_dim: int, cross_stitch_init: float) -> None:
        """Add the mode's tables to ``net`` with ``table(name, rows, group, kind, width)`` (and its other parameters)."""

    def watch_users(self, net: MultitaskNet, users: torch.Tensor) -> torch.Tensor:
        return net.user_vectors(users)

    def watch_items(self, net: MultitaskNet, items: torch.Tensor) -> torch.Tensor:
        return net.item_embeddings(items)

    def item_vectors(self, net: MultitaskNet) -> torch.Tensor:
        return net.item_embeddings.weight

    def rating_vectors(self, net: MultitaskNet, users: torch.Tensor, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return net.user_vectors(users), net.item_embeddings(items)

    def dense_parameters(self, net: MultitaskNet) -> list[nn.Parameter]:
        """Parameters the mode adds that are not tables (in the ``mlp`` group)."""
        return []


#: How the two heads share the user and item embeddings, by name (:mod:`mtrec.registry`).
SHARINGS: Registry[type[Sharing]] = Registry("sharing")


@SHARINGS.register("hard")
class HardSharing(Sharing):
    summary = "the same U and Q for both heads; the default"


@SHARINGS.register("separate")
class SeparateSharing(Sharing):
    summary = "each head its own"

    def make(self, net, table, embedding_dim, cross_stitch_init):
        table("rating_user_embeddings", "users", "embeddings", ScaledEmbedding, embedding_dim)
        table("rating_item_embeddings", "items", "embeddings", ScaledEmbedding, embedding_dim)

    def rating_vectors(self, net, users, items):
        return net.rating_user_embeddings(users), net.rating_item_embeddings(items)


@SHARINGS.register("residual")
class ResidualSharing(Sharing):
    summary = "shared plus a task-specific part each"

    def make(self, net, table, embedding_dim, cross_stitch_init):
        for name, rows in (("watch_user", "users"), ("watch_item", "items"), ("rating_user", "users"), ("rating_item", "items")):
            table(f"{name}_residuals", rows, "residuals", ZeroEmbedding, embedding_dim)

    def watch_users(self, net, users):
        return net.user_vectors(users) + net.watch_user_residuals(users)

    def watch_items(self, net, items):
        return net.item_embeddings(items) + net.watch_item_residuals(items)

    def item_vectors(self, net):
        return net.item_embeddings.weight + net.watch_item_residuals.weight

    def rating_vectors(self, net, users, items):
        u = net.user_vectors(users) + net.rating_user_residuals(users)
        q = net.item_embeddings(items) + net.rating_item_residuals(items)
        return u, q


@SHARINGS.register("cross-stitch")
class CrossStitchSharing(SeparateSharing):
    summary = "two sets mixed by learned 2x2 maps"

    def make(self, net, table, embedding_dim, cross_stitch_init):
        super().make(net, table, embedding_dim, cross_stitch_init)
        a = float(cross_stitch_init)
        start = torch.tensor([[a, 1.0 - a], [1.0 - a, a]])
        net.user_stitch = nn.Parameter(start.clone())
        net.item_stitch = nn.Parameter(start.clone())

    @staticmethod
    def _stitched(stitch: torch.Tensor, row: int, watch: torch.Tensor, rating: torch.Tensor) -> torch.Tensor:
        return stitch[row, 0] * watch + stitch[row, 1] * rating

    def watch_users(self, net, users):
        return self._stitched(net.user_stitch, 0, net.user_vectors(users), net.rating_user_embeddings(users))

    def watch_items(self, net, items):
        return self._stitched(net.item_stitch, 0, net.item_embeddings(items), net.rating_item_embeddings(items))

    def item_vectors(self, net):
        return self._stitched(net.item_stitch, 0, net.item_embeddings.weight, net.rating_item_embeddings.weight)

    def rating_vectors(self, net, users, items):
        u = self._stitched(net.user_stitch, 1, net.user_vectors(users), net.rating_user_embeddings(users))
        q = self._stitched(net.item_stitch, 1, net.item_embeddings(items), net.rating_item_embeddings(items))
        return u, q

    def dense_parameters(self, net):
        return [net.user_stitch, net.item_stitch]


class MultitaskNet(nn.Module):
    """Matrix factorisation (watch score p) and an MLP (rating r_hat) on user/item embeddings.

    Parameters
    ----------
    num_users, num_items:
        Sizes of the user and item index spaces.
    embedding_dim:
        Dimension d of the latent vectors.
    layer_sizes:
        Input size of each dense layer of the rating MLP; the first must be 3 * d.
        Default ``[3d, 64]``.
    sharing:
        How the heads share embeddings: ``"hard"`` (both read the same U and Q), ``"separate"``
        (each head its own), ``"residual"`` (shared U and Q plus a task-specific part per head,
        u_t = u + u'_t, the parts starting at zero and regularised as their own parameter group),
        or ``"cross-stitch"`` (two embedding sets mixed by a learned 2×2 map per table, Misra et
        al. 2016, starting at ``cross_stitch_init`` on the diagonal).
    rating_bias:
        If true the rating head adds a learned bias per user and per item to the MLP's output.
    cross_stitch_init:
        The diagonal of the cross-stitch maps at the start (1 − it off the diagonal); 1 is the identity.
    user_encoder, encoder_settings:
        How users become vectors (:data:`USER_ENCODERS`): ``"id"``, a learned vector per user, or
        ``"history"``, that plus the pooled vectors of the user's training items
        (:class:`mtrec.nn.encoders.HistoryEncoder`, whose options ``encoder_settings`` gives).
    rating_reads_score:
        The rating MLP also reads the pair's watch score p (from the factorisation part): its
        input is ``[u, q, u*q, p]``, one wider than ``layer_sizes[0]``.
    item_item:
        The watch score has an item–item path: ``w · Σ_{j∈N(u)} B[j, i]`` over the user's training
        items N(u), with B an items × items matrix (``item_item_matrix``, filled by
        :func:`mtrec.nn.itemitem.ease_matrix` after training) and w its weight
        (``item_item_weight``, 0 until then). It takes items² floats, so it suits catalogues of
        up to :data:`~mtrec.nn.itemitem.MAX_ITEM_ITEM` items.
    """

    def __init__(
        self,
        num_users: int,
        num_items: int,
        embedding_dim: int = 32,
        layer_sizes: Sequence[int] | None = None,
        sharing: str = "hard",
        rating_bias: bool = False,
        cross_stitch_init: float = 0.9,
        user_encoder: str = "id",
        encoder_settings: dict | None = None,
        rating_reads_score: bool = False,
        item_item: bool = False,
        features: dict | None = None,
        id_dropout: float = 0.0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self._structure = {
            "num_users": num_users, "num_items": num_items, "embedding_dim": embedding_dim,
            "layer_sizes": None if layer_sizes is None else list(layer_sizes), "sharing": sharing,
            "rating_bias": bool(rating_bias), "cross_stitch_init": cross_stitch_init, "user_encoder": user_encoder,
            "encoder_settings": dict(encoder_settings or {}), "rating_reads_score": bool(rating_reads_score),
            "item_item": bool(item_item), "features": _feature_sizes(features), "id_dropout": float(id_dropout),
            "seed": int(seed),
        }  # fmt: skip
        if isinstance(id_dropout, bool) or not isinstance(id_dropout, (int, float)) or not 0.0 <= id_dropout < 1.0:
            raise ConfigError(f"id_dropout must be a number from 0 to below 1, got {id_dropout!r}")
        self.id_dropout, self.seed = float(id_dropout), int(seed)
        sizes = check_architecture(embedding_dim, [3 * embedding_dim, 64] if layer_sizes is None else layer_sizes)
        self.sharing = sharing
        self._sharing = SHARINGS[sharing]()
        self.user_encoder = user_encoder
        self._encoder = USER_ENCODERS[user_encoder](**(encoder_settings or {}))
        self._tables: list[Table] = []
        self.feature_sizes = self._structure["features"]
        count = {"users": num_users, "items": num_items, **{f"{side[:-1]}_features": n for side, n in self.feature_sizes.items()}}
        # the users' training items (CSR), which history encoders and the item-item path read
        self.register_buffer("history_indptr", torch.zeros(num_users + 1, dtype=torch.long), persistent=False)
        self.register_buffer("history_indices", torch.zeros(0, dtype=torch.long), persistent=False)

        def table(name: str, rows: str, group: str, kind: type[nn.Embedding], width: int) -> None:
            # Every table is made here and declared once: parameter groups, the fused step's row
            # gradients and fold-in's user parameters all read the declaration.
            setattr(self, name, kind(count[rows], width))
            self._tables.append(Table(name, rows, group))

        self._encoder.make(self, table, embedding_dim)
        table("item_embeddings", "items", "embeddings", ScaledEmbedding, embedding_dim)
        table("user_biases", "users", "biases", ZeroEmbedding, 1)
        table("item_biases", "items", "biases", ZeroEmbedding, 1)
        self._sharing.make(self, table, embedding_dim, cross_stitch_init)  # before the MLP: the seed's order of random draws
        self.rating_reads_score = bool(rating_reads_score)
        self.rating_mlp = build_mlp([sizes[0] + 1, *sizes[1:]] if self.rating_reads_score else sizes)
        self.rating_bias = bool(rating_bias)
        if self.rating_bias:
            table("rating_user_biases", "users", "biases", ZeroEmbedding, 1)
            table("rating_item_biases", "items", "biases", ZeroEmbedding, 1)
        self.item_item = bool(item_item)
        if self.item_item:
            check_item_item(num_items)
            self.register_buffer("item_item_matrix", torch.zeros(num_items, num_items))
            self.register_buffer("item_item_weight", torch.zeros(()))
            self.register_buffer("item_item_l2", torch.zeros(()))  # the λ its matrix was made with (0: not yet)
        for side in self.feature_sizes:
            one = side[:-1]
            # a user or item is its id vector plus the weighted sum of its feature vectors (LightFM's);
            # the feature vectors and biases start at zero: an untrained feature adds nothing
            table(f"{one}_feature_embeddings", f"{one}_features", "embeddings", ZeroEmbedding, embedding_dim)
            table(f"{one}_feature_biases", f"{one}_features", "biases", ZeroEmbedding, 1)
            # whose id rows trained: an entity without training pairs is its features alone
            self.register_buffer(f"{one}_known", torch.ones(count[side]))
            for name, dtype in (("indptr", torch.long), ("indices", torch.long), ("weights", torch.float32)):
                size = count[side] + 1 if name == "indptr" else 0
                self.register_buffer(f"{one}_feature_{name}", torch.zeros(size, dtype=dtype), persistent=False)
            # the bags as a dense (entities x feature rows) matrix where it is small: a product is much
            # faster than embedding_bag, forward and backward (empty where it would be large)
            self.register_buffer(f"{one}_feature_dense", torch.zeros(0), persistent=False)
        if self.feature_sizes:
            self.register_buffer("id_draws", torch.zeros((), dtype=torch.long))

    @property
    def embedding_sharing(self) -> bool:
        """Whether both heads read the very same U and Q (hard sharing)."""
        return self.sharing == "hard"

    @property
    def rating_users(self) -> nn.Embedding:
        """The user embeddings the rating head reads (hard and separate sharing)."""
        return self.user_embeddings if self.sharing == "hard" else self.rating_user_embeddings

    @property
    def rating_items(self) -> nn.Embedding:
        """The item embeddings the rating head reads (hard and separate sharing)."""
        return self.item_embeddings if self.sharing == "hard" else self.rating_item_embeddings

    def use_histories(self, indptr: torch.Tensor | Sequence[int], indices: torch.Tensor | Sequence[int]) -> MultitaskNet:
        """Keep the users' training items (CSR: user u's are ``indices[indptr[u]:indptr[u + 1]]``, sorted),
        which a history encoder and the item-item path read; returns the network."""
        device = self.item_biases.weight.device
        indptr = torch.as_tensor(indptr, dtype=torch.long, device=device)
        indices = torch.as_tensor(indices, dtype=torch.long, device=device)
        if indptr.dim() != 1 or len(indptr) != self._structure["num_users"] + 1:
            raise ConfigError(f"the histories' indptr must have one entry per user and one more, got {tuple(indptr.shape)}")
        if indices.dim() != 1 or len(indices) != int(indptr[-1]):
            raise ConfigError(f"the histories' indices must hold indptr[-1] = {int(indptr[-1])} items, got {tuple(indices.shape)}")
        self.history_indptr, self.history_indices = indptr, indices
        self._encoder.use_histories(self, indptr, indices)
        return self

    def history_bags(self, users: torch.Tensor, cap: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The training items of each of ``users`` as bags for ``embedding_bag``: (items, offsets,
        owner), the owner being each item's position in ``users``. With ``cap``, a user's first
        ``cap`` items (the lowest indices) only."""
        starts = self.history_indptr[users]
        lengths = self.history_indptr[users + 1] - starts
        if cap is not None:
            lengths = lengths.clamp_max(cap)
        offsets = torch.cumsum(lengths, 0) - lengths
        owner = torch.repeat_interleave(torch.arange(len(users), device=users.device), lengths)
        positions = torch.arange(len(owner), device=users.device) - offsets[owner] + starts[owner]
        return self.history_indices[positions], offsets, owner

    # ------------------------------------------------------------------ side features

    def use_features(self, side: str, indptr, indices, weights) -> MultitaskNet:
        """Keep each user's or item's features (``side`` ``"users"`` or ``"items"``) as CSR bags of
        feature rows and weights (:class:`mtrec.data.feature_maps.FeatureBags`); returns the network."""
        if side not in self.feature_sizes:
            raise ConfigError(f"this network has no {side[:-1]} features (it was made with features={sorted(self.feature_sizes) or 'none'})")
        one, device = side[:-1], self.item_biases.weight.device
        indptr = torch.as_tensor(indptr, dtype=torch.long, device=device)
        indices = torch.as_tensor(indices, dtype=torch.long, device=device)
        weights = torch.as_tensor(weights, dtype=torch.float32, device=device)
        count = len(getattr(self, f"{one}_known"))
        if indptr.dim() != 1 or len(indptr) != count + 1 or len(indices) != int(indptr[-1]) or len(weights) != len(indices):
            raise ConfigError(
                f"the {one} features must be CSR bags of {count} {side}, got indptr {tuple(indptr.shape)}, indices {tuple(indices.shape)}"
            )
        if len(indices) and (int(indices.min()) < 0 or int(indices.max()) >= self.feature_sizes[side]):
            raise ConfigError(f"the {one} features index rows 0..{self.feature_sizes[side] - 1}, got one outside them")
        setattr(self, f"{one}_feature_indptr", indptr)
        setattr(self, f"{one}_feature_indices", indices)
        setattr(self, f"{one}_feature_weights", weights)
        dense = torch.zeros(0, device=device)
        if count * self.feature_sizes[side] <= MAX_DENSE_FEATURES:
            owner = torch.repeat_interleave(torch.arange(count, device=device), indptr[1:] - indptr[:-1])
            # index_add_, not index_put_(accumulate=True), whose threads race on large bags: a fixed order of sums
            rows = self.feature_sizes[side]
            dense = torch.zeros(count * rows, device=device).index_add_(0, owner * rows + indices, weights).view(count, rows)
        setattr(self, f"{one}_feature_dense", dense)
        return self

    @torch.no_grad()
    def with_new_items(self, indptr, indices, weights) -> MultitaskNet:
        """This network with more items after its own, each known by its features alone (CSR bags of
        the new items' feature rows): their id rows are zero and do not count, the item-item path
        has nothing for them. The item tables are copied, padded; every other trained tensor is
        shared with this network (read the new one, do not train it); this network is not changed."""
        if "items" not in self.feature_sizes:
            raise ConfigError("this model was trained without item features (features=none or users): it cannot score an item it never saw")
        n, added = self._structure["num_items"], len(indptr) - 1
        device = self.item_biases.weight.device
        state = self.state_dict()
        for table in self._tables:
            if table.rows == "items":
                weight = state[f"{table.name}.weight"]
                state[f"{table.name}.weight"] = torch.cat([weight, weight.new_zeros(added, weight.shape[1])])
        state["item_known"] = torch.cat([state["item_known"], state["item_known"].new_zeros(added)])
        if self.item_item:
            state["item_item_matrix"] = F.pad(state["item_item_matrix"], (0, added, 0, added))
        with torch.device("meta"):  # the structure only: every tensor is assigned below
            bigger = self.resized(num_items=n + added)
        bigger.load_state_dict(state, assign=True)
        bigger.use_histories(self.history_indptr, self.history_indices)
        indptr = torch.as_tensor(indptr, dtype=torch.long, device=device)
        bigger.use_features(
            "items",
            torch.cat([self.item_feature_indptr, indptr[1:] + self.item_feature_indptr[-1]]),
            torch.cat([self.item_feature_indices, torch.as_tensor(indices, dtype=torch.long, device=device)]),
            torch.cat([self.item_feature_weights, torch.as_tensor(weights, dtype=torch.float32, device=device)]),
        )
        if "users" in self.feature_sizes:
            bigger.use_features("users", self.user_feature_indptr, self.user_feature_indices, self.user_feature_weights)
        return bigger.train(self.training)

    @torch.no_grad()
    def use_known(self, side: str, known) -> MultitaskNet:
        """Mark which users or items have trained id rows (1) and which are their features alone (0)."""
        if side in self.feature_sizes:
            getattr(self, f"{side[:-1]}_known").copy_(torch.as_tensor(known, dtype=torch.float32))
        return self

    def _feature_sum(self, one: str, index: torch.Tensor | None, biases: bool = False) -> torch.Tensor:
        """Σ w·F[f] over the features of each entity at ``index`` (all of them for None): their vectors,
        or with ``biases`` their biases (shape (n,))."""
        table = getattr(self, f"{one}_feature_biases" if biases else f"{one}_feature_embeddings").weight
        dense = getattr(self, f"{one}_feature_dense")
        if dense.dim() == 2:
            summed = (dense if index is None else dense[index]) @ table
            return summed.squeeze(-1) if biases else summed
        indptr, indices, weights = (getattr(self, f"{one}_feature_{name}") for name in ("indptr", "indices", "weights"))
        if index is None:
            summed = F.embedding_bag(indices, table, indptr[:-1], mode="sum", per_sample_weights=weights)
        else:
            starts = indptr[index]
            lengths = indptr[index + 1] - starts
            offsets = torch.cumsum(lengths, 0) - lengths
            owner = torch.repeat_interleave(torch.arange(len(index), device=index.device), lengths)
            positions = torch.arange(len(owner), device=index.device) - offsets[owner] + starts[owner]
            summed = F.embedding_bag(indices[positions], table, offsets, mode="sum", per_sample_weights=weights[positions])
        return summed.squeeze(-1) if biases else summed

    def begin_step(self) -> None:
        """A training step begins: the id dropout draws its masks afresh (one per side, which every
        head and every call of the step reads)."""
        if self.feature_sizes and self.training and self.id_dropout > 0:
            self.id_draws += 1

    def _known(self, one: str, index: torch.Tensor | None) -> torch.Tensor:
        """1 where the id part counts, 0 where the entity is its features alone: the entities without
        training pairs, and while training with ``id_dropout`` a share of the others, the same for the
        whole step (DropoutNet's id dropout: the features learn to stand alone, as they must for a
        cold user or item). The mask is a hash of the seed, the step and the entity, so a resumed or
        a distributed run drops what one uninterrupted process drops."""
        known = getattr(self, f"{one}_known")
        if index is None:
            index = torch.arange(len(known), device=known.device)
        known = known[index]
        if self.training and self.id_dropout > 0:
            offset = _wrapped(int(self.id_draws) * _GOLDEN + self.seed * _SEED_STRIDE + (1 if one == "item" else 2) * _SIDE_STRIDE)
            known = known * (_uniform(index + offset) >= self.id_dropout).float()
        return known

    def _with_features(self, one: str, index: torch.Tensor | None, vectors: torch.Tensor) -> torch.Tensor:
        """``vectors`` (the id part) masked where the id does not count, plus the features' sum."""
        if f"{one}s" not in self.feature_sizes:
            return vectors
        return vectors * self._known(one, index).unsqueeze(-1) + self._feature_sum(one, index)

    def user_bias(self, users: torch.Tensor) -> torch.Tensor:
        """The watch head's bias a of each user, shape (n,)."""
        a = self.user_biases(users).squeeze(-1)
        if "users" in self.feature_sizes:
            a = a * self._known("user", users) + self._feature_sum("user", users, biases=True)
        return a

    def item_bias(self, items: torch.Tensor | None = None) -> torch.Tensor:
        """The watch head's bias b of each item (all items for None), shape (n,)."""
        b = self.item_biases.weight.squeeze(-1) if items is None else self.item_biases(items).squeeze(-1)
        if "items" in self.feature_sizes:
            b = b * self._known("item", items) + self._feature_sum("item", items, biases=True)
        return b

    def item_item_scores(self, users: torch.Tensor) -> torch.Tensor:
        """The item-item path's score of every item for each user, w · x_u B, shape (len(users), num_items)."""
        items, offsets, _ = self.history_bags(users)
        pooled = F.embedding_bag(items, self.item_item_matrix, offsets, mode="sum")
        return pooled * self.item_item_weight

    def _item_item_on(self) -> bool:
        return self.item_item and bool(self.item_item_weight != 0)

    def _item_item_pairs(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """w · Σ_{j∈N(u)} B[j, i] of each (user, item) pair."""
        history, _, owner = self.history_bags(users)
        values = self.item_item_matrix[history, items[owner]]
        return torch.zeros(len(users), device=users.device).index_add_(0, owner, values) * self.item_item_weight

    def user_vectors(self, users: torch.Tensor) -> torch.Tensor:
        """The user encoder's vectors of ``users`` (:data:`USER_ENCODERS`), before sharing mixes them."""
        return self._encoder.encode(self, users)

    def watch_users(self, users: torch.Tensor) -> torch.Tensor:
        """The likelihood head's user vectors (with their features' sum, for a network with user features)."""
        return self._with_features("user", users, self._sharing.watch_users(self, users))

    def watch_items(self, items: torch.Tensor) -> torch.Tensor:
        """The likelihood head's item vectors (with their features' sum, for a network with item features)."""
        return self._with_features("item", items, self._sharing.watch_items(self, items))

    def rating_vectors(self, users: torch.Tensor, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The rating head's u and q of each pair (the features' sums added as for the watch head: both
        heads read the same feature vectors, under every sharing mode)."""
        u, q = self._sharing.rating_vectors(self, users, items)
        return self._with_features("user", users, u), self._with_features("item", items, q)

    def rating_from_embeddings(self, u: torch.Tensor, q: torch.Tensor, score: torch.Tensor | None = None) -> torch.Tensor:
        """r_hat from already looked-up rating-head embeddings (and the pairs' watch scores, for a
        network whose rating head reads them)."""
        inputs = [u, q, u * q] if score is None else [u, q, u * q, score.unsqueeze(1)]
        return self.rating_mlp(torch.cat(inputs, dim=1)).squeeze(-1)

    @torch.no_grad()
    def start_ratings_at(self, mean: float) -> None:
        """Set the rating MLP's last bias to ``mean``: an untrained rating head then predicts the mean rating."""
        self.rating_mlp[-1].bias.fill_(mean)

    def rating(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """r_hat = MLP([u, q, u*q]) (with the factorisation's watch score p where the head reads it;
        + the user's and the item's rating bias) for each (user, item) pair."""
        score = self.factorisation_score(users, items) if self.rating_reads_score else None
        r_hat = self.rating_from_embeddings(*self.rating_vectors(users, items), score)
        if self.rating_bias:
            a, b = self.rating_user_biases(users).squeeze(-1), self.rating_item_biases(items).squeeze(-1)
            if "users" in self.feature_sizes:
                a = a * self._known("user", users)
            if "items" in self.feature_sizes:
                b = b * self._known("item", items)
            r_hat = r_hat + a + b
        return r_hat

    def factorisation_score(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """u . q + a + b for each (user, item) pair: the watch score without the item-item path."""
        u, q = self.watch_users(users), self.watch_items(items)
        return (u * q).sum(1) + self.user_bias(users) + self.item_bias(items)

    def watch_score(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """p = u . q + a + b (+ the item-item path's score, where it has a weight) for each (user, item) pair."""
        score = self.factorisation_score(users, items)
        return score + self._item_item_pairs(users, items) if self._item_item_on() else score

    def watch_scores(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """p of each of ``users`` (B,) against each of its items ``items`` (B, K), shape (B, K): the
        users' vectors are made once (a history-aware user is pooled once, not K times)."""
        q = self.watch_items(items.reshape(-1))
        u, q = self.watch_users(users), q.view(*items.shape, q.shape[-1])  # sizes spelled out: a share may be empty
        scores = (u.unsqueeze(1) * q).sum(2) + self.user_bias(users).unsqueeze(1) + self.item_bias(items.reshape(-1)).view(items.shape)
        if self._item_item_on():
            scores = scores + self.item_item_scores(users).gather(1, items)
        return scores

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(p, r_hat)`` for each (user, item) pair, both of shape (batch,)."""
        return self.watch_score(users, items), self.rating(users, items)

    def all_watch_scores(self, users: torch.Tensor) -> torch.Tensor:
        """p for every item, one row per user: U[users] Q^T + a + b, shape (len(users), num_items)."""
        scores = self.watch_users(users) @ self.item_vectors().T
        scores += self.user_bias(users).unsqueeze(1)
        scores += self.item_bias().unsqueeze(0)
        if self._item_item_on():
            scores += self.item_item_scores(users)
        return scores

    def item_vectors(self) -> torch.Tensor:
        """The likelihood head's item embeddings (Q, with its residual or stitch where there is one, and
        the items' features where the network has them)."""
        return self._with_features("item", None, self._sharing.item_vectors(self))

    def tables(self) -> list[Table]:
        """Every embedding table, in the order it was made: what indexes its rows and its group."""
        return list(self._tables)

    def heads(self) -> list[Head]:
        """The two heads: ``watch`` (p = u·q + a + b) and ``rating`` (the MLP, and its biases if any)."""
        biases = ("rating_user_biases", "rating_item_biases") if self.rating_bias else ()
        return [Head("watch", "watch", "watch_score"), Head("rating", "rating", "rating", tables=biases, dense=("rating_mlp",))]

    def structure(self) -> dict:
        """The arguments this network was made with: ``MultitaskNet(**net.structure())`` makes one of the same shape."""
        return dict(self._structure)

    def resized(self, num_users: int | None = None, num_items: int | None = None) -> MultitaskNet:
        """A fresh network of the same structure for other numbers of users or items (fold-in's one user)."""
        sizes = {"num_users": num_users, "num_items": num_items}
        return MultitaskNet(**{**self._structure, **{k: v for k, v in sizes.items() if v is not None}})

    def table_weights(self, rows: str) -> list[nn.Parameter]:
        """The weights of the tables whose rows are ``rows`` (``"users"`` or ``"items"``)."""
        return [getattr(self, table.name).weight for table in self._tables if table.rows == rows]

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """The parameters by group, for per-group weight decay: the tables by their declared group;
        the heads' dense modules (the MLP) and the sharing's own parameters (the stitches) in ``mlp``."""
        groups: dict[str, list[nn.Parameter]] = {group: [] for group in PARAMETER_GROUPS}
        for table in self._tables:
            groups[table.group].append(getattr(self, table.name).weight)
        for head in self.heads():
            groups["mlp"] += [param for name in head.dense for param in getattr(self, name).parameters()]
        groups["mlp"] += self._sharing.dense_parameters(self)
        return groups
