"""Stacked training: K runs of one architecture trained in lockstep, as one computation.

A small model's step is mostly per-operation overhead: at batch 256 the seed's network spends
about 0.5 ms dispatching some 40 operations and about 0.16 ms computing. K runs stacked share
that overhead: their parameters live in (K, ...) buffers, a step gathers all K runs' rows in one
``index_select``, runs the rating MLP as one batched matrix product, scatters the gradients in one
``index_add_``, and updates every run with one Adam call per distinct (learning rate, weight decay).

What stacks, and what may differ
--------------------------------
Runs stack when their steps have the same shapes (:func:`stack_key`): the fused step's network
(:class:`~mtrec.train.steps.FusedStep`) with the same sharing, embedding size, MLP, rating biases,
watch loss and negatives per pair, the same batch size, ratings in the batches or not, the same
number of users, items and training pairs, on the same device. Everything else may differ, run
by run: the seed (so the initialisation and every draw), the split and its training rows, the
loss weights λF and λR, the learning rate and its schedule, the weight decays, the epochs, early
stopping, the moving average of the weights.

How a run keeps its single-run numbers
--------------------------------------
Each run is an ordinary run (:func:`mtrec.runs.train_run`) in its own thread, with its own
:class:`~mtrec.train.loop.Trainer`, sampler, evaluators, early stopping, schedule, callbacks,
checkpoints and run directory. Only its epochs of steps are trained by the group: when every run
of the group has asked for its next epoch, one of them trains all those epochs together
(:meth:`StackGroup.train_epoch`), each run's batches drawn by its own sampler, exactly as alone.
Each run's network and Adam state are its own tensors, views of the group's buffers, in the
layout of a single run's :class:`~mtrec.train.steps.FusedStep` (checkpoints are the same). The
stacked gradients are the fused step's, with a leading K dimension, computed so that each run's
are its own bit for bit: products that round alike (the one-output layer, a matrix-vector
product, run by run), each run's row of the buffers 64-byte aligned, element-wise kernels on rows
of whole vectors (else run by run), scale factors rounded once as the fused step rounds them. So a stacked run trains exactly as
it trains alone (``tests/test_stacked.py`` checks the metrics within 1e-5, the bound promised
on any machine, and the models).

The group's tensor work runs in the thread that started it (:func:`run_group`'s caller): PyTorch's
parallel operations run several times slower in other threads, and the runs' threads compute on
one core each and hand their evaluations to it too.

A run that stops (early stopping, its last epoch, an error) leaves the group; the others are
packed again into smaller buffers, so it no longer costs time, and its weights no longer change.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import inspect
import math
import queue
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence, TypeVar

import torch
import torch.optim.adam as torch_adam
from torch import nn

from mtrec.errors import ConfigError
from mtrec.nn.network import MultitaskNet
from mtrec.nn.objective import JointObjective
from mtrec.train.steps import FUSED_WATCH_LOSSES, FusedStep, current_seat, stack_seats, weight_decay_groups

T = TypeVar("T")


#: Elements a row must hold for an element-wise kernel to compute all of it in whole vectors (two
#: AVX-512 registers of float32 per loop step, twice): rows of other lengths are computed run by run.
WHOLE_VECTORS = 64


def stack_key(config: Any, train: Any) -> tuple | None:
    """What runs must share to stack (see the module docstring), or None for a run that trains alone
    (its step is not the fused one). ``config`` is a :class:`~mtrec.config.RunConfig`."""
    model = config.model
    if config.build_model().resolved_step() != "fused" or config.refit:
        return None
    with_ratings = bool(train.has_ratings and model.regression_weight > 0)
    return (
        model.sharing, model.embedding_dim, tuple(model.effective_layer_sizes), model.rating_bias, model.watch_loss,
        model.negatives, model.batch_size, model.exclude_positives, model.negative_sampling, with_ratings, model.device,
        train.num_users, train.num_items, len(train), model.num_threads,
    )  # fmt: skip


def group_runs(keys: Sequence[tuple | None], size: int | None, limit: int) -> list[list[int]]:
    """The runs (by index) in groups: runs of one key together, in their order, at most ``size``
    (``None``: ``limit``) per group; a run whose key is None alone."""
    if size is not None and size > limit:
        raise ConfigError(f"--stack {size} does not fit in memory: at most {limit} of these runs fit at once")
    most = min(size or limit, limit)
    by_key: dict[tuple, list[int]] = {}
    groups: list[list[int]] = []
    for index, key in enumerate(keys):
        if key is None:
            groups.append([index])
            continue
        members = by_key.setdefault(key, [])
        if not members or len(members) >= most:
            members = by_key[key] = []
            groups.append(members)
        members.append(index)
    return groups


#: The parts of :func:`stack_key`, named as a note names them when runs of one job cannot stack.
KEY_PARTS = (
    "sharing", "embedding size", "rating MLP", "rating biases", "watch loss", "negatives", "batch size",
    "exclude positives", "negative sampling", "ratings in the batches", "device", "users", "items", "training pairs", "threads",
)  # fmt: skip


#: The model and run settings that may differ between the runs of one group (everything else a
#: run's :func:`stack_key` is built from must be equal); a tuner that asks for several trials at a
#: time lets these vary within a slice and shares the others (:func:`mtrec.studies.tuning.tune`).
VARYING = (
    "seed", "factorization_weight", "regression_weight", "learning_rate", "l2", "l2_embeddings", "l2_residuals",
    "l2_biases", "l2_mlp", "lr_schedule", "lr_gamma", "lr_step", "ema", "epochs", "early_stopping", "patience",
)  # fmt: skip


def plan_groups(names: Sequence[str], configs: Sequence[Any], trains: Sequence[Any], stack: int | None) -> tuple[list[list[int]], list[str]]:
    """The runs of one job (``names``, with their configs and training data) in stacked groups, and
    the notes that say how they were grouped and why any could not stack.

    ``stack`` is the most runs per group (None: ``auto``, as many as memory holds); 1 trains each
    alone. Raises :class:`ConfigError` for a ``stack`` larger than memory allows.
    """
    keys = [stack_key(config, train) if stack != 1 else None for config, train in zip(configs, trains)]
    limit = min((memory_limit(config, train) for config, train, key in zip(configs, trains, keys) if key is not None), default=1)
    groups = group_runs(keys, stack, limit)
    notes: list[str] = []
    if stack == 1 or len(names) == 1:
        return groups, notes
    alone = [names[i] for i, key in enumerate(keys) if key is None]
    if alone:
        notes.append(
            f"{len(alone)} of the {len(names)} runs train one at a time: stacking covers the fused step's models "
            f"(id users, fixed weights, BPR or logsigmoid, no row penalty, no features, no refit), and "
            f"{_listed(alone)} {'is' if len(alone) == 1 else 'are'} not"
        )
    distinct = list(dict.fromkeys(key for key in keys if key is not None))
    if len(distinct) > 1:
        differing = [part for index, part in enumerate(KEY_PARTS) if len({key[index] for key in distinct}) > 1]
        notes.append(f"the stackable runs make {len(distinct)} groups of different shapes: they differ in {', '.join(differing)}")
    stacked = [group for group in groups if len(group) > 1]
    if stacked:
        sizes = " + ".join(str(len(group)) for group in stacked)
        notes.append(f"{sum(len(g) for g in stacked)} runs train stacked, in {len(stacked)} group{'s' if len(stacked) > 1 else ''} of {sizes}")
    return groups, notes


def _listed(names: Sequence[str], most: int = 4) -> str:
    shown = ", ".join(names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")


def memory_limit(config: Any, train: Any) -> int:
    """How many runs of ``config`` on ``train`` fit in the device's memory at once (at least 1)."""
    from mtrec.train.devices import resolve_device
    from mtrec.train.memory import machine_memory

    model = config.build_model()
    one = sum(model.memory_needed(train.num_users, train.num_items).values())
    device = resolve_device(config.model.device)
    return max(1, int(machine_memory(device) // max(one, 1.0)))


# ---------------------------------------------------------------------------------------------
# the layout: K runs' flat parameters as rows of one buffer per weight-decay group


@dataclass
class _Layout:
    """The group's buffers: per weight-decay group, values and gradients of shape (K, padded size);
    run k's flat parameter of that group is row k's first ``sizes[g]`` values."""

    members: list[StackedStep]
    values: list[torch.Tensor]
    grads: list[torch.Tensor]
    sizes: list[int]
    #: where each parameter of the network lies: name -> (group, offset, shape)
    places: dict[str, tuple[int, int, torch.Size]] = field(default_factory=dict)

    #: (name, width) -> rows() (made once per layout: a step reads them several times)
    _rows: dict[tuple[str, int], tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = field(default_factory=dict)

    def rows(self, name: str, width: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A table's values and gradients as rows of ``width`` over all K runs, and each run's first row (K, 1)."""
        if (name, width) not in self._rows:
            group, offset, _ = self.places[name]
            padded = self.values[group].shape[1]
            base = (torch.arange(len(self.members), device=self.values[group].device) * padded + offset) // width
            self._rows[name, width] = (self.values[group].view(-1, width), self.grads[group].view(-1, width), base.unsqueeze(1))
        return self._rows[name, width]

    def stacked(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """A parameter of every run as one (K, *shape) view, with its gradient."""
        group, offset, shape = self.places[name]
        size = math.prod(shape)
        view = (len(self.members), *shape)
        return self.values[group][:, offset : offset + size].view(view), self.grads[group][:, offset : offset + size].view(view)


def _places(step: StackedStep) -> tuple[list[int], dict[str, tuple[int, int, torch.Size]]]:
    """Each flat group's size, and where each named parameter lies in them."""
    by_id = {id(p): name for name, p in step.network.named_parameters()}
    sizes, places = [], {}
    for group, params in enumerate(step.param_lists):
        offset = 0
        for param in params:
            places[by_id[id(param)]] = (group, offset, param.shape)
            offset += param.numel()
        sizes.append(offset)
    return sizes, places


def flats_itemsize(members: list[StackedStep], group: int) -> int:
    return members[0].flat.values[group].element_size()


def _pack(members: list[StackedStep]) -> _Layout:
    """Buffers holding ``members``' current values and gradients, and every member's tensors pointed at them."""
    sizes, places = _places(members[0])
    width = members[0].network.user_embeddings.embedding_dim
    values, grads = [], []
    for group, size in enumerate(sizes):
        # Every row of every table starts at a multiple of its width, and every run's row of the buffer
        # at a multiple of 64 bytes, as a tensor of its own does: some kernels round by alignment.
        step = math.lcm(width, 64 // flats_itemsize(members, group))
        padded = -(-size // step) * step
        flats = [member.flat.values[group] for member in members]
        value = flats[0].new_zeros(len(members), padded)
        grad = flats[0].new_zeros(len(members), padded)
        for row, flat in enumerate(flats):
            value[row, :size] = flat.detach()
        values.append(value)
        grads.append(grad)
    layout = _Layout(members, values, grads, sizes, places)
    for name, (group, offset, _) in places.items():
        if len(places[name][2]) == 2 and name.endswith("embeddings.weight") and offset % width:
            raise ConfigError(f"cannot stack: {name} does not start on a row of the stacked buffer")
    for row, member in enumerate(members):
        member.point_at(layout, row)
    return layout


# ---------------------------------------------------------------------------------------------
# a run's step, and the group that trains its epochs


class StackedStep(FusedStep):
    """A run's fused step whose epochs its :class:`StackGroup` trains, stacked with the others'.

    It is a :class:`~mtrec.train.steps.FusedStep` (the same flat parameters, optimizer and
    checkpoints, and it can still step alone); :attr:`group` is what its trainer hands its epochs to.
    """

    def __init__(self, group: StackGroup, network: MultitaskNet, objective: JointObjective, learning_rate: float, weight_decay: Any) -> None:
        super().__init__(network, objective, learning_rate, weight_decay)
        self.group = group
        self.param_lists = [params for params, _ in weight_decay_groups(network, weight_decay)]

    def point_at(self, layout: _Layout, row: int) -> None:
        """Make this run's flat parameters, gradients and network tensors views of row ``row`` of ``layout``."""
        for group, (flat, params) in enumerate(zip(self.flat.values, self.param_lists)):
            size = layout.sizes[group]
            flat.data = layout.values[group][row, :size]
            flat.grad = layout.grads[group][row, :size]
            offset = 0
            for param in params:
                n = param.numel()
                param.data = flat.data[offset : offset + n].view_as(param)
                self.flat._grads[id(param)] = flat.grad[offset : offset + n].view_as(param)
                offset += n

    def detach_from(self, layout: _Layout) -> None:
        """Give this run's tensors storage of their own (it leaves the group)."""
        for flat, params in zip(self.flat.values, self.param_lists):
            own = flat.detach().clone()
            grad = flat.grad.detach().clone()
            flat.data, flat.grad = own, grad
            offset = 0
            for param in params:
                n = param.numel()
                param.data = own[offset : offset + n].view_as(param)
                self.flat._grads[id(param)] = grad[offset : offset + n].view_as(param)
                offset += n


class StackGroup:
    """Runs that train their epochs together: one thread per run, meeting once per epoch.

    Parameters
    ----------
    seats:
        How many runs (threads) take part; each enters with :meth:`seat`.
    """

    def __init__(self, seats: int, threads: int | None = None) -> None:
        self._cond = threading.Condition()
        self._pending = seats  # seats that have not yet joined with a step, nor left
        self._members: list[StackedStep] = []
        self._arrived: dict[StackedStep, Any] = {}
        self._results: dict[StackedStep, Any] = {}
        self._running = False
        self._cancelled = False
        self._layout: _Layout | None = None
        #: the largest number of runs trained together, and the epochs trained stacked
        self.widest = 0
        self.epochs = 0
        #: held while one run's network is built (initialisation seeds the global generator)
        self.build_lock = threading.Lock()
        # The thread that started the group (run_group's) does its tensor work: the stacked epochs
        # and the runs' evaluations. PyTorch's parallel operations run several times slower in
        # the runs' own threads than in the thread that set the intra-op threads up.
        self._owner = threading.current_thread()
        self._threads = threads or torch.get_num_threads()
        # Also turns MKL's dynamic choice of threads off, which would otherwise take the runs' idle
        # threads for load and split a product another way from one epoch to the next.
        torch.set_num_threads(self._threads)
        self._queue: queue.SimpleQueue = queue.SimpleQueue()

    def call(self, function: Callable[..., T], *args: Any) -> T:
        """``function(*args)`` on the group's own thread (here, if this is it)."""
        if threading.current_thread() is self._owner:
            return function(*args)
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._queue.put((function, args, future))
        return future.result()

    def serve(self, timeout: float) -> None:
        """Do the work the runs' threads asked for, waiting up to ``timeout`` seconds for some."""
        try:
            function, args, future = self._queue.get(timeout=timeout)
        except queue.Empty:
            return
        if torch.get_num_threads() != self._threads:  # a run's thread set its own count where it is shared
            torch.set_num_threads(self._threads)
        try:
            future.set_result(function(*args))
        except BaseException as error:  # handed to the run that asked
            future.set_exception(error)

    # -------------------------------------------------------------------- seats and members

    @contextlib.contextmanager
    def seat(self, order: int = 0) -> Iterator[None]:
        """Run the body (one run, the ``order``-th of the group) as a seat of this group, in this thread."""
        stack_seats.seat = seat = _Seat(self, order)
        if threading.current_thread() is not self._owner:
            # A thread that has run parallel operations keeps its own pool of workers, and K idle
            # pools slow the group's thread several-fold: a run's thread computes on one core, and
            # hands its heavy work (epochs, evaluations) to the group's thread (:meth:`call`).
            torch.set_num_threads(1)
        try:
            yield
        finally:
            stack_seats.seat = None
            seat.release()

    def join(self, seat: _Seat, step: StackedStep) -> None:
        with self._cond:
            self._pending -= 1
            self._members.append(step)
            self._cond.notify_all()

    def release(self, seat: _Seat) -> None:
        """A seat that will not join (its run trains alone, or failed before its step)."""
        with self._cond:
            self._pending -= 1
            self._cond.notify_all()

    def leave(self, step: StackedStep) -> None:
        """``step``'s run trains no more epochs: its tensors become its own, the others go on without it."""
        with self._cond:
            if step not in self._members:
                return
            while self._running:  # never move a run's tensors while its group trains
                self._cond.wait()
            self._members.remove(step)
            self._arrived.pop(step, None)
            if self._layout is not None and step in self._layout.members:
                step.detach_from(self._layout)
            self._cond.notify_all()

    def cancel(self) -> None:
        """Stop every run at its next epoch (an interrupt): each raises KeyboardInterrupt, as a run alone would."""
        with self._cond:
            self._cancelled = True
            self._cond.notify_all()

    # -------------------------------------------------------------------- the epochs

    def _ready(self) -> bool:
        return not self._running and self._pending == 0 and bool(self._arrived) and len(self._arrived) == len(self._members)

    def train_epoch(self, trainer: Any) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """Train ``trainer``'s next epoch together with the other runs' (blocks until they all ask)."""
        step = trainer.step
        with self._cond:
            self._arrived[step] = trainer
            self._cond.notify_all()
            while step not in self._results:
                if self._cancelled:
                    self._arrived.pop(step, None)
                    raise KeyboardInterrupt
                if self._ready():
                    arrived, self._arrived = dict(self._arrived), {}
                    self._running = True
                    self._cond.release()
                    try:
                        results = self.call(self._train, arrived)
                    except BaseException as error:  # every run of the epoch sees the failure
                        results = dict.fromkeys(arrived, error)
                    finally:
                        self._cond.acquire()
                        self._running = False
                    self._results.update(results)
                    self._cond.notify_all()
                else:
                    self._cond.wait()
            result = self._results.pop(step)
        if isinstance(result, BaseException):
            raise result
        return result

    def _train(self, arrived: dict[StackedStep, Any]) -> dict[StackedStep, Any]:
        if torch.get_num_threads() != self._threads:
            torch.set_num_threads(self._threads)
        members = sorted(arrived, key=lambda step: step.order)
        if self._layout is None or self._layout.members != members:
            # A run that left was given storage of its own by leave(), in its own thread, which may
            # be restoring or saving its weights now: never touch its tensors here.
            self._layout = _pack(members)
        self.widest = max(self.widest, len(members))
        self.epochs += 1
        return _StackedEpoch(self._layout, [arrived[m] for m in members]).run()


class _Seat:
    def __init__(self, group: StackGroup, order: int) -> None:
        self.group, self.state, self.order = group, "pending", order

    def member(self, network: MultitaskNet, objective: JointObjective, learning_rate: float, weight_decay: Any) -> StackedStep:
        step = StackedStep(self.group, network, objective, learning_rate, weight_decay)
        step.order = self.order
        self.group.join(self, step)
        self.state = "member"
        return step

    def release(self) -> None:
        if self.state == "pending":
            self.group.release(self)
        self.state = "released"


def build_lock() -> contextlib.AbstractContextManager:
    """Held while a network is initialised in a thread of a group (the initialisation seeds torch's global generator)."""
    seat = getattr(stack_seats, "seat", None)
    return seat.group.build_lock if seat is not None else contextlib.nullcontext()


# ---------------------------------------------------------------------------------------------
# one stacked epoch


class _StackedEpoch:
    """One epoch of K runs' steps: the fused step's gradients with a leading K dimension."""

    def __init__(self, layout: _Layout, trainers: list[Any]) -> None:
        self.layout, self.trainers = layout, trainers
        self.steps: list[StackedStep] = [t.step for t in trainers]
        first = self.steps[0]
        self.net: MultitaskNet = first.network
        self.objective = first.objective
        self.linears = [name for name, layer in self.net.named_modules() if isinstance(layer, nn.Linear) and name.startswith("rating_mlp")]
        device = layout.values[0].device
        self.weight_f = torch.tensor([s.objective.weight("watch") for s in self.steps], device=device).view(-1, 1)
        self.weight_r = torch.tensor([s.objective.weight("rating") for s in self.steps], device=device).view(-1, 1)
        self._scales: dict[tuple[str, int], torch.Tensor] = {}
        self.terms = FUSED_WATCH_LOSSES[self.objective.tasks["watch"].component()]

    def scale(self, task: str, factor: float, size: int) -> torch.Tensor:
        """Each run's ``factor * weight(task) / size``, (K, 1): computed in double and rounded once to
        float32, as the fused step's Python number is, so that every run's gradient is its own bit for bit."""
        key = (task, size)
        if key not in self._scales:
            values = [factor * step.objective.weight(task) / size for step in self.steps]
            self._scales[key] = torch.tensor(values, dtype=torch.float32, device=self.weight_f.device).view(-1, 1)
        return self._scales[key]

    def run(self) -> dict[StackedStep, tuple[torch.Tensor, torch.Tensor, bool]]:
        trainers, K = self.trainers, len(self.trainers)
        draws = [t.sampler.draw() for t in trainers]
        n, size = len(trainers[0].sampler), trainers[0].batch_size
        users = torch.stack([d[0] for d in draws])
        items = torch.stack([d[1] for d in draws])
        negatives = torch.stack([d[2] for d in draws])
        has_ratings = draws[0][3] is not None
        ratings = torch.stack([d[3] for d in draws]) if has_ratings else None
        width = len(self.objective.task_names) + 1
        sums = torch.zeros(K, width, dtype=torch.float64, device=users.device)
        per_step = torch.empty(K, -(-n // size), width, dtype=torch.float32, device=users.device)
        averages = _Averages([t.average for t in trainers if t.average is not None])
        adam = _GroupedAdam(self.steps)
        for index, start in enumerate(range(0, n, size)):
            stop = min(start + size, n)
            batch_ratings = ratings[:, start:stop] if ratings is not None else None
            losses = self.gradients(users[:, start:stop], items[:, start:stop], negatives[:, start:stop], batch_ratings)
            adam.step()
            averages.update()
            per_step[:, index] = losses
            sums += losses * (stop - start)
        return {step: (sums[k], per_step[k], has_ratings) for k, step in enumerate(self.steps)}

    @torch.no_grad()
    def gradients(self, users: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor, ratings: torch.Tensor | None) -> torch.Tensor:
        """Fill every run's gradients for its batch; returns (K, 3): each run's ``[L_F, L_R, loss]``."""
        layout, net = self.layout, self.net
        K, size = users.shape
        d = net.user_embeddings.embedding_dim
        several = negatives.dim() == 3
        k = negatives.shape[2] if several else 1
        for grad in layout.grads:
            grad.zero_()
        user_rows, user_grads, user_base = layout.rows("user_embeddings.weight", d)
        item_rows, item_grads, item_base = layout.rows("item_embeddings.weight", d)
        bias_rows, bias_grads, bias_base = layout.rows("item_biases.weight", 1)
        bias_rows, bias_grads = bias_rows.view(-1), bias_grads.view(-1)
        negatives_flat = negatives.reshape(K, -1)
        user_index = (users + user_base).reshape(-1)
        positive_index = (positives + item_base).reshape(-1)
        negative_index = (negatives_flat + item_base).reshape(-1)
        bias_positive_index = (positives + bias_base).reshape(-1)
        bias_negative_index = (negatives_flat + bias_base).reshape(-1)
        u = user_rows.index_select(0, user_index).view(K, size, d)
        q = item_rows.index_select(0, torch.cat([positive_index, negative_index]))
        q_pos, q_neg = q[: K * size].view(K, size, d), q[K * size :]
        item_bias = bias_rows.index_select(0, torch.cat([bias_positive_index, bias_negative_index]))
        bias_pos, bias_neg = item_bias[: K * size].view(K, size), item_bias[K * size :]
        if several:
            q_diff = q_pos.unsqueeze(2) - q_neg.view(K, size, k, d)
            margin = (q_diff * u.unsqueeze(2)).sum(3) + bias_pos.unsqueeze(2) - bias_neg.view(K, size, k)
        else:
            q_diff = q_pos - q_neg.view(K, size, d)
            margin = (q_diff * u).sum(2) + bias_pos - bias_neg.view(K, size)
        terms_f, d_terms, loss_f = self._watch_terms(margin)
        if several:
            d_margin = d_terms * self.scale("watch", 1.0, size * k).unsqueeze(2)
            d_u = (d_margin.unsqueeze(3) * q_diff).sum(2)
            d_q_neg = (d_margin.unsqueeze(3) * u.unsqueeze(2)).reshape(K, size * k, d)
            d_q_pos = d_q_neg.view(K, size, k, d).sum(2)
            d_bias_pos, d_bias_neg = d_margin.sum(2), d_margin.reshape(K, -1)
        else:
            d_margin = (d_terms * self.scale("watch", 1.0, size)).unsqueeze(2)
            d_u = d_margin * q_diff
            d_q_pos = d_margin * u
            d_q_neg = d_q_pos
            d_bias_pos = d_bias_neg = d_margin.view(K, size)
        loss_r = torch.zeros(K, device=u.device)
        if ratings is not None:
            if net.embedding_sharing:
                loss_r, d_u_r, d_q_r = self._rating(u, q_pos, users, positives, ratings)
                d_u = d_u + d_u_r
                d_q_pos = d_q_pos + d_q_r
            else:
                r_users, r_user_grads, r_user_base = layout.rows("rating_user_embeddings.weight", d)
                r_items, r_item_grads, r_item_base = layout.rows("rating_item_embeddings.weight", d)
                r_user_index = (users + r_user_base).reshape(-1)
                r_item_index = (positives + r_item_base).reshape(-1)
                u_r = r_users.index_select(0, r_user_index).view(K, size, d)
                q_r = r_items.index_select(0, r_item_index).view(K, size, d)
                loss_r, d_u_r, d_q_r = self._rating(u_r, q_r, users, positives, ratings)
                r_user_grads.index_add_(0, r_user_index, d_u_r.reshape(-1, d))
                r_item_grads.index_add_(0, r_item_index, d_q_r.reshape(-1, d))
        user_grads.index_add_(0, user_index, d_u.reshape(-1, d))
        item_grads.index_add_(0, positive_index, d_q_pos.reshape(-1, d))
        # index_add_ with alpha != 1 takes a slower path; negating first is exact
        item_grads.index_add_(0, negative_index, d_q_neg.reshape(-1, d).neg())
        bias_grads.index_add_(0, bias_positive_index, d_bias_pos.reshape(-1))
        bias_grads.index_add_(0, bias_negative_index, d_bias_neg.reshape(-1).neg())
        loss = self.weight_f.view(-1) * loss_f + self.weight_r.view(-1) * loss_r
        return torch.stack([loss_f, loss_r, loss], dim=1)

    def _watch_terms(self, margin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The watch loss's terms and derivatives of every run's margins, and each run's mean term (K,).

        A vectorised sigmoid computes a tensor's last few elements one by one, which rounds them
        otherwise: each run's terms are its own bit for bit only where its row of margins is whole
        vectors (every full batch at the usual sizes), computed at once; otherwise run by run, as
        the fused step computes them.
        """
        K = margin.shape[0]
        rows = margin.reshape(K, -1)
        if rows.shape[1] % WHOLE_VECTORS == 0:
            terms, derivatives = self.terms(rows, torch.sigmoid(rows))
            return terms.view_as(margin), derivatives.view_as(margin), terms.mean(1)
        each = [self.terms(row, torch.sigmoid(row)) for row in rows]
        terms = torch.stack([t for t, _ in each])
        return terms.view_as(margin), torch.stack([d for _, d in each]).view_as(margin), torch.stack([t.mean() for t, _ in each])

    def _rating(self, u: torch.Tensor, q: torch.Tensor, users: torch.Tensor, items: torch.Tensor, ratings: torch.Tensor):
        """L_R of each run (K,) and its gradients: the MLP's and the rating biases' (into the buffers), and u's and q's."""
        layout, net = self.layout, self.net
        K, size, d = u.shape
        inputs = [torch.cat([u, q, u * q], dim=2)]
        pre_activations = []
        weights = [layout.stacked(f"{name}.weight") for name in self.linears]
        biases = [layout.stacked(f"{name}.bias") for name in self.linears]
        for index, ((weight, _), (bias, _)) in enumerate(zip(weights, biases)):
            if weight.shape[1] == 1:
                # A one-output layer is a matrix-vector product, which rounds otherwise than a batched
                # one: run by run, as the fused step computes it.
                pre = torch.stack([torch.addmm(bias[r], inputs[-1][r], weight[r].T) for r in range(K)])
            else:
                pre = torch.baddbmm(bias.unsqueeze(1), inputs[-1], weight.transpose(1, 2))
            pre_activations.append(pre)
            if index < len(self.linears) - 1:
                inputs.append(pre.clamp_min(0.0))
        r_hat = pre_activations[-1].view(K, size)
        if net.rating_bias:
            user_bias_rows, user_bias_grads, user_bias_base = layout.rows("rating_user_biases.weight", 1)
            item_bias_rows, item_bias_grads, item_bias_base = layout.rows("rating_item_biases.weight", 1)
            user_bias_index = (users + user_bias_base).reshape(-1)
            item_bias_index = (items + item_bias_base).reshape(-1)
            r_hat = r_hat + user_bias_rows.view(-1).index_select(0, user_bias_index).view(K, size)
            r_hat = r_hat + item_bias_rows.view(-1).index_select(0, item_bias_index).view(K, size)
        error = r_hat - ratings
        loss_r = error.square().mean(1) if size % WHOLE_VECTORS == 0 else torch.stack([e.square().mean() for e in error])
        grad = (error * self.scale("rating", 2.0, size)).unsqueeze(2)
        if net.rating_bias:
            user_bias_grads.view(-1).index_add_(0, user_bias_index, grad.reshape(-1))
            item_bias_grads.view(-1).index_add_(0, item_bias_index, grad.reshape(-1))
        for index in range(len(self.linears) - 1, -1, -1):
            (weight, weight_grad), (_, bias_grad) = weights[index], biases[index]
            if weight.shape[1] == 1:  # one output: run by run, into the gradients, as the fused step does
                for r in range(K):
                    torch.mm(grad[r].T, inputs[index][r], out=weight_grad[r])
                    torch.sum(grad[r], 0, out=bias_grad[r])
            else:
                weight_grad.copy_(torch.bmm(grad.transpose(1, 2), inputs[index]))
                bias_grad.copy_(grad.sum(1))
            grad = grad * weight if weight.shape[1] == 1 else torch.bmm(grad, weight)
            if index > 0:
                grad = torch.ops.aten.threshold_backward(grad, inputs[index], 0.0)
        d_u = grad[..., :d] + grad[..., 2 * d :] * q
        d_q = grad[..., d : 2 * d] + grad[..., 2 * d :] * u
        return loss_r, d_u, d_q


# ---------------------------------------------------------------------------------------------
# Adam over every run at once


_ADAM_KEYWORDS = set(inspect.signature(torch_adam.adam).parameters)


class _GroupedAdam:
    """Each run's own Adam step (its optimizer's state and hyper-parameters), in one call per
    distinct (learning rate, betas, eps, weight decay): the same arithmetic as each optimizer's
    ``step()``, without K calls' overhead."""

    def __init__(self, steps: Sequence[StackedStep]) -> None:
        self.optimizers = [step.optimizer for step in steps]
        for optimizer in self.optimizers:
            optimizer._opt_called = True  # as Optimizer.step marks it (a learning-rate scheduler reads it after the epoch)
        self.calls: list[tuple[dict[str, Any], list[list[torch.Tensor]]]] | None = None
        grouped: dict[tuple, list[list[torch.Tensor]]] = {}
        settings: dict[tuple, dict[str, Any]] = {}
        for optimizer in self.optimizers:
            for group in optimizer.param_groups:
                if group.get("amsgrad") or group.get("maximize") or group.get("capturable") or group.get("differentiable"):
                    return  # not the optimizer make_step builds: each steps on its own
                beta1, beta2 = group["betas"]
                key = (float(group["lr"]), float(beta1), float(beta2), float(group["eps"]), float(group["weight_decay"]),
                       bool(group.get("fused")), bool(group.get("foreach")), bool(group.get("decoupled_weight_decay", False)))  # fmt: skip
                lists = grouped.setdefault(key, [[], [], [], [], []])
                settings[key] = {
                    "lr": group["lr"], "beta1": beta1, "beta2": beta2, "eps": group["eps"], "weight_decay": group["weight_decay"],
                    "fused": group.get("fused"), "foreach": group.get("foreach"), "amsgrad": False, "maximize": False,
                }  # fmt: skip
                if "decoupled_weight_decay" in _ADAM_KEYWORDS:
                    settings[key]["decoupled_weight_decay"] = bool(group.get("decoupled_weight_decay", False))
                for param in group["params"]:
                    state = optimizer.state[param]
                    if not state:
                        _init_state(state, param, group)
                    for target, value in zip(lists, (param, param.grad, state["exp_avg"], state["exp_avg_sq"], state["step"])):
                        target.append(value)
        self.calls = [(settings[key], lists, _direct_kernel(settings[key], lists[0])) for key, lists in grouped.items()]

    def step(self) -> None:
        if self.calls is None:
            for optimizer in self.optimizers:
                optimizer.step()
            return
        for settings, (params, grads, exp_avgs, exp_avg_sqs, steps), kernel in self.calls:
            if kernel is None:
                torch_adam.adam(params, grads, exp_avgs, exp_avg_sqs, [], steps, **settings)
                continue
            # What torch.optim.adam's fused path does for tensors of one device and dtype, without its
            # per-call grouping: count the step, then the fused kernel.
            torch._foreach_add_(steps, 1)
            kernel(
                params, grads, exp_avgs, exp_avg_sqs, [], steps, amsgrad=False, lr=float(settings["lr"]), beta1=float(settings["beta1"]),
                beta2=float(settings["beta2"]), weight_decay=float(settings["weight_decay"]), eps=float(settings["eps"]), maximize=False,
            )  # fmt: skip


def _direct_kernel(settings: dict[str, Any], params: list[torch.Tensor]) -> Callable[..., None] | None:
    """The fused Adam kernel a call of ``settings`` runs, where it can be called directly: a fused
    optimizer whose tensors share one device and dtype, with a Python learning rate (None: through
    ``torch.optim.adam``)."""
    name = "_fused_adamw_" if settings.get("decoupled_weight_decay") else "_fused_adam_"
    if not settings.get("fused") or isinstance(settings["lr"], torch.Tensor) or not hasattr(torch, name):
        return None
    if len({(param.device, param.dtype) for param in params}) != 1:
        return None
    return getattr(torch, name)


class _Averages:
    """The moving averages of the weights of a group's runs, moved a step together: one
    ``_foreach_lerp_`` with each tensor's own weight, the same arithmetic as each average's
    :meth:`~mtrec.train.averaging.WeightAverage.update` (one call per run where this PyTorch has no
    list of weights)."""

    together: bool | None = None  # whether this PyTorch's _foreach_lerp_ takes a list of weights

    def __init__(self, averages: Sequence[Any]) -> None:
        self.averages = list(averages)
        self.targets = [value for average in self.averages for value in average.average]
        self.sources = [param.detach() for average in self.averages for param in average.parameters]
        self.weights = [1.0 - average.decay for average in self.averages for _ in average.average]
        if _Averages.together is None:
            _Averages.together = "ScalarList" in torch.ops.aten._foreach_lerp_.overloads()

    def update(self) -> None:
        if not self.targets:
            return
        if _Averages.together:
            torch._foreach_lerp_(self.targets, self.sources, self.weights)
        else:
            for average in self.averages:
                average.update()


def _init_state(state: dict, param: torch.Tensor, group: dict) -> None:
    """Adam's lazy state, as ``torch.optim.Adam`` makes it on its first step."""
    fused = bool(group.get("fused"))
    if fused or group.get("capturable"):
        state["step"] = torch.zeros((), dtype=torch.float32, device=param.device)
    else:
        state["step"] = torch.tensor(0.0, dtype=torch.float32)
    state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
    state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)


# ---------------------------------------------------------------------------------------------
# running a group


def run_group(jobs: Sequence[Callable[[], T]], threads: int | None = None) -> tuple[list[T | BaseException], StackGroup]:
    """Run ``jobs`` (each one training run) as one stacked group, one thread each; returns each
    job's result or the exception it raised, in order. The group computes with ``threads`` intra-op
    threads (None: this thread's). An interrupt stops every run at its next epoch (as each alone
    would stop) and is raised again once all have stopped."""
    group = StackGroup(len(jobs), threads)
    results: list[Any] = [None] * len(jobs)

    def work(index: int) -> None:
        try:
            with group.seat(index):
                results[index] = jobs[index]()
        except BaseException as error:  # reported to the caller, run by run
            results[index] = error

    _run_threads(group, work, len(jobs))
    return results, group


def _run_threads(group: StackGroup, work: Callable[[int], None], count: int) -> None:
    if count == 1:
        work(0)
        return
    threads = [threading.Thread(target=work, args=(index,), name=f"mtrec-stack-{index}", daemon=True) for index in range(count)]
    for thread in threads:
        thread.start()
    interrupted = False
    while any(thread.is_alive() for thread in threads):
        try:
            group.serve(0.05)
        except KeyboardInterrupt:
            interrupted = True
            group.cancel()
    for thread in threads:
        thread.join()
    if interrupted:
        raise KeyboardInterrupt


__all__ = ["VARYING", "StackGroup", "StackedStep", "current_seat", "group_runs", "memory_limit", "plan_groups", "run_group", "stack_key"]
