"""Training steps: one optimiser step of an objective on a batch, two ways behind one interface.

* :class:`AutogradStep` trains any network that keeps the network contract
  (:class:`mtrec.nn.network.RecommenderNetwork`) on any objective: autograd computes the
  gradients, PyTorch's Adam (its fused kernel where available) applies them.
* :class:`FusedStep` is the fast path for the seed's network. At batch 256 a step is a few
  hundred microseconds of arithmetic buried under the per-operation overhead of autograd and
  of the optimiser's bookkeeping; this step removes both without changing the mathematics:
  every parameter lives in one flat buffer (the module's tensors become views of it), so
  Adam's fused kernel updates the whole model in one call, and the gradients of the objective
  are written out analytically, with no autograd graph. :meth:`FusedStep.supports` says which
  networks and objectives those hand-written gradients cover.

:func:`make_step` picks one: ``"auto"`` takes the fused step where it is supported. The two
give the same losses and gradients to rounding (``tests/test_training.py``), so the choice
only changes speed.
"""

from __future__ import annotations

import functools
import threading
from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from mtrec.errors import ConfigError
from mtrec.nn.batch import Batch
from mtrec.nn.network import PARAMETER_GROUPS, MultitaskNet
from mtrec.nn.objective import JointObjective
from mtrec.nn.tasks import RatingTask, WatchTask

#: The choices of training step.
STEPS = ("auto", "fused", "autograd")

#: This thread's seat in a stacked group (:mod:`mtrec.train.stacked` sets ``seat``), if its run is one.
stack_seats = threading.local()


def current_seat():
    """The stacked group's seat of this thread's run while its step is not made yet, else None."""
    seat = getattr(stack_seats, "seat", None)
    return seat if seat is not None and seat.state == "pending" else None


def weight_decay_groups(network: nn.Module, weight_decay: float | dict[str, float]) -> list[tuple[list[nn.Parameter], float]]:
    """The network's parameters grouped by their weight decay, in a fixed order.

    ``weight_decay`` is one value for every parameter, or one per group of
    :data:`mtrec.nn.network.PARAMETER_GROUPS` (a network without ``parameter_groups()`` puts
    everything in ``"mlp"``). Groups with the same decay are merged.
    """
    named = network.parameter_groups() if hasattr(network, "parameter_groups") else {"mlp": list(network.parameters())}
    if not isinstance(weight_decay, dict):
        weight_decay = dict.fromkeys(PARAMETER_GROUPS, float(weight_decay))
    by_decay: dict[float, list[nn.Parameter]] = {}
    for group in PARAMETER_GROUPS:
        for param in named.get(group, []):
            by_decay.setdefault(float(weight_decay[group]), []).append(param)
    return [(params, decay) for decay, params in by_decay.items()]


def _adam(groups: list[tuple[list[torch.Tensor], float]], learning_rate: float) -> torch.optim.Adam:
    """Adam over parameter groups: the fused kernel, or the multi-tensor one where this PyTorch has none."""
    param_groups = [{"params": params, "weight_decay": decay} for params, decay in groups]
    try:
        return torch.optim.Adam(param_groups, lr=learning_rate, fused=True)
    except RuntimeError:  # fused Adam on the CPU needs PyTorch >= 2.4
        return torch.optim.Adam(param_groups, lr=learning_rate, foreach=True)


class Step:
    """One optimiser step of an objective: ``step(batch)`` returns the batch's losses, one per task in
    the objective's order (:attr:`~mtrec.nn.objective.JointObjective.task_names`), then the joint loss.

    Subclasses fill the gradients (:meth:`gradients`); between that and the optimiser's update
    :attr:`reduce`, if set, is called with the gradient tensors (distributed training sums
    them over processes there).

    Attributes
    ----------
    kind:
        ``"fused"`` or ``"autograd"``, as recorded in a run's config.
    optimizer:
        The ``torch.optim.Adam`` that applies the gradients; a learning-rate scheduler
        may drive it.
    """

    kind = ""

    def __init__(self, network: nn.Module, objective: JointObjective) -> None:
        self.network = network
        self.objective = objective
        self.optimizer: torch.optim.Optimizer
        self.reduce: Callable[[list[torch.Tensor]], None] | None = None
        #: If set (and the step gives :meth:`row_gradients`), called instead of :attr:`reduce`
        #: with the row-sparse table gradients and the dense rest.
        self.reduce_rows: Callable[[list[tuple[torch.Tensor, list[torch.Tensor]]], list[torch.Tensor]], None] | None = None

    def gradients(self, batch: Batch) -> torch.Tensor:
        raise NotImplementedError

    def gradient_tensors(self) -> list[torch.Tensor]:
        """The tensors that hold the gradients, as the optimiser reads them."""
        return [p.grad for group in self.optimizer.param_groups for p in group["params"]]

    def row_gradients(self) -> tuple[list[tuple[torch.Tensor, list[torch.Tensor]]], list[torch.Tensor]] | None:
        """The last batch's gradients split into row-sparse tables and a dense rest, or None.

        Each group is the row indices the batch touched and the gradients of the tables those
        indices address (zero in every other row); the rest are the other gradient tensors.
        None where the step does not know which rows it touched (the autograd step).
        """
        return None

    #: Whether :meth:`gradients` sums the gradients over processes itself (before combining them).
    reduces_itself = False

    def __call__(self, batch: Batch) -> torch.Tensor:
        begin = getattr(self.network, "begin_step", None)
        if begin is not None:
            begin()  # per-step draws (the id dropout's masks)
        losses = self.gradients(batch)
        if self.reduce is not None and not self.reduces_itself:
            rows = self.row_gradients() if self.reduce_rows is not None else None
            if rows is not None:
                self.reduce_rows(*rows)
            else:
                self.reduce(self.gradient_tensors())
        self.optimizer.step()
        return losses


class AutogradStep(Step):
    """Autograd and Adam, for any network that keeps the network contract and any objective.

    Parameters
    ----------
    network:
        The network to train.
    objective:
        Its objective (:class:`mtrec.nn.objective.JointObjective`).
    learning_rate:
        Adam's learning rate.
    weight_decay:
        Adam's weight decay: one value, or one per parameter group.
    """

    kind = "autograd"

    def __init__(
        self,
        network: nn.Module,
        objective: JointObjective,
        learning_rate: float,
        weight_decay: float | dict[str, float] = 0.0,
    ) -> None:
        super().__init__(network, objective)
        groups = weight_decay_groups(network, weight_decay)
        learned = list(objective.weighting.parameters())
        if learned:  # a weighting's own parameters (uncertainty's log variances), never decayed
            groups.append((learned, 0.0))
        for params, _ in groups:
            for param in params:
                # Every parameter always has a gradient (zero where the batch does not reach it),
                # so that Adam moves and decays them all alike, as the fused step's flat buffer does.
                param.grad = torch.zeros_like(param)
        self.optimizer = _adam(groups, learning_rate)
        self.trained = [p for params, _ in groups for p in params]
        self.reduces_itself = objective.weighting.gradient_method

    def gradients(self, batch: Batch) -> torch.Tensor:
        self.optimizer.zero_grad(set_to_none=False)
        with torch.enable_grad():
            losses, loss = self.objective(self.network, batch)
            penalty = self.objective.row_penalty(self.network, batch) if getattr(self.objective, "row_l2", 0.0) > 0 else None
            if self.objective.weighting.gradient_method:
                self._combined_gradients(list(losses.values()))
                if penalty is not None:  # a regulariser of no task: added after the tasks' gradients are combined
                    params = [p for p in self.trained if p.requires_grad]
                    grads = [
                        g if g is not None else torch.zeros_like(p) for p, g in zip(params, torch.autograd.grad(penalty, params, allow_unused=True))
                    ]
                    if self.reduce is not None:
                        self.reduce(grads)  # every process adds the same, global penalty gradient
                    for param, grad in zip(params, grads):
                        param.grad += grad
            else:
                (loss if penalty is None else loss + penalty).backward()
        return torch.stack([*losses.values(), loss]).detach()

    def _combined_gradients(self, losses: list[torch.Tensor]) -> None:
        """Each task's gradient, one backward pass each; those of parameters more than one task
        reaches (the shared ones) combined by the weighting, as a tasks × parameters matrix."""
        weighting, params = self.objective.weighting, self.trained
        last = max((t for t, loss in enumerate(losses) if loss.requires_grad), default=-1)
        grads = [
            list(torch.autograd.grad(loss, params, retain_graph=t < last, allow_unused=True)) if loss.requires_grad else [None] * len(params)
            for t, loss in enumerate(losses)
        ]
        if self.reduce is not None:
            # In a distributed run the tasks' gradients (and losses, for GradNorm) are summed over
            # processes first, so that every process combines the same global gradients.
            losses = [loss.detach().clone() for loss in losses]
            self.reduce([g for task in grads for g in task if g is not None] + [loss.view(1) for loss in losses])
        reached = [[t for t, task in enumerate(grads) if task[i] is not None] for i in range(len(params))]
        shared = [i for i, tasks in enumerate(reached) if len(tasks) > 1]
        if shared:
            combined = weighting.shared(self._gradient_matrix(grads, shared), losses)
            offset = 0
            for i in shared:
                size = params[i].numel()
                params[i].grad.copy_(combined[offset : offset + size].view_as(params[i]))
                offset += size
        for i, tasks in enumerate(reached):
            if len(tasks) == 1:
                params[i].grad.copy_(weighting.own(tasks[0], grads[tasks[0]][i]))

    def _gradient_matrix(self, grads: list[list[torch.Tensor | None]], shared: list[int]) -> torch.Tensor:
        """The tasks × (shared parameters, flattened) matrix of the tasks' gradients; 0 where a task does not reach."""
        params = self.trained
        matrix = torch.empty(len(grads), sum(params[i].numel() for i in shared), device=params[shared[0]].device)
        for row, task in zip(matrix, grads):
            torch.cat([params[i].new_zeros(params[i].numel()) if task[i] is None else task[i].reshape(-1) for i in shared], out=row)
        return matrix


class FlatParameters:
    """Moves groups of parameters into one flat buffer per group, each with a matching flat gradient.

    After construction each parameter is a view of its group's buffer in :attr:`values`, and
    :meth:`grad_of` gives the matching view of that buffer's gradient.
    """

    def __init__(self, groups: Iterable[list[nn.Parameter]]) -> None:
        self.values: list[nn.Parameter] = []
        self._grads: dict[int, torch.Tensor] = {}
        for params in groups:
            flat = nn.Parameter(torch.cat([p.detach().reshape(-1) for p in params]))
            flat.grad = torch.zeros_like(flat)
            offset = 0
            for param in params:
                size = param.numel()
                param.data = flat.data[offset : offset + size].view_as(param)
                self._grads[id(param)] = flat.grad[offset : offset + size].view_as(param)
                offset += size
            self.values.append(flat)

    def zero_grad(self) -> None:
        for flat in self.values:
            flat.grad.zero_()

    def grad_of(self, param: torch.Tensor) -> torch.Tensor:
        return self._grads[id(param)]


def _bpr_terms(margin: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return 1.0 - sigma, sigma * (sigma - 1.0)


def _logsigmoid_terms(margin: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return -F.logsigmoid(margin), sigma - 1.0


#: The watch losses whose gradients :class:`FusedStep` writes by hand: for the margins p⁺ − p⁻ and
#: their σ, each pair's loss term and its derivative by the margin. A registered loss missing here
#: trains with the autograd step under ``step="auto"`` and is refused by ``step="fused"``.
FUSED_WATCH_LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]] = {
    "bpr": _bpr_terms,
    "logsigmoid": _logsigmoid_terms,
}


class FusedStep(Step):
    """The seed's objective on :class:`~mtrec.nn.network.MultitaskNet`, with hand-written gradients.

    Same parameters as :class:`AutogradStep`; raises :class:`ConfigError` for a network or
    objective that :meth:`supports` refuses.
    """

    kind = "fused"

    @classmethod
    def unsupported(cls, network: nn.Module, objective: object) -> str | None:
        """Why the hand-written gradients do not cover this network and objective; None if they do."""
        if type(network) is not MultitaskNet:
            return f"the network is a {type(network).__name__}, not the seed's MultitaskNet"
        if type(objective) is not JointObjective:
            return f"the objective is a {type(objective).__name__}, not a JointObjective"
        if objective.task_names != ("watch", "rating") or [type(task) for task in objective.tasks.values()] != [WatchTask, RatingTask]:
            return f"its hand-written gradients cover the library's tasks watch and rating, not {', '.join(objective.task_names)}"
        if network.rating_reads_score:
            return "its hand-written gradients cover a rating head of [u, q, u*q], not one that also reads the watch score"
        if getattr(network, "feature_sizes", None):
            return "its hand-written gradients cover id embeddings, not side features"
        if objective.row_l2 > 0:
            return "its hand-written gradients cover weight decay, not an L2 penalty on the rows a batch reads (row_l2)"
        if objective.watch_weights != "none":
            return f"its hand-written gradients cover an unweighted watch loss, not one weighted by {objective.watch_weights}"
        claimed = cls.claims()
        watch, rating = (task.component() for task in objective.tasks.values())
        chosen = {"sharing": network.sharing, "user_encoder": network.user_encoder, "watch_loss": watch, "rating_loss": rating}
        for kind, value in {**chosen, "weighting": objective.weighting_name}.items():
            if value not in claimed[kind]:
                return f"its hand-written gradients cover the {kind.replace('_', ' ')} {', '.join(claimed[kind])}, not {value}"
        return None

    @staticmethod
    def claims() -> dict[str, tuple[str, ...]]:
        """The components whose every combination the hand-written gradients cover, by kind: what
        ``step="auto"`` takes the fused step for, and what the parity tests run over."""
        return {
            "sharing": ("hard", "separate"),
            "user_encoder": ("id",),
            "watch_loss": tuple(FUSED_WATCH_LOSSES),
            "rating_loss": ("mse",),
            "weighting": ("fixed",),
        }

    @classmethod
    def supports(cls, network: nn.Module, objective: object) -> bool:
        """Whether the hand-written gradients cover ``network`` and ``objective``."""
        return cls.unsupported(network, objective) is None

    def __init__(
        self,
        network: MultitaskNet,
        objective: JointObjective,
        learning_rate: float,
        weight_decay: float | dict[str, float] = 0.0,
    ) -> None:
        why = self.unsupported(network, objective)
        if why is not None:
            raise ConfigError(f"the fused training step does not support this model: {why}; use step='autograd' or 'auto'")
        super().__init__(network, objective)
        groups = weight_decay_groups(network, weight_decay)
        self.flat = FlatParameters(params for params, _ in groups)
        self.optimizer = _adam([([flat], decay) for flat, (_, decay) in zip(self.flat.values, groups)], learning_rate)
        self.linears = [layer for layer in network.rating_mlp if isinstance(layer, nn.Linear)]
        self._touched: tuple[torch.Tensor, torch.Tensor] | None = None  # the last batch's users and items

    def gradient_tensors(self) -> list[torch.Tensor]:
        return [flat.grad for flat in self.flat.values]

    def row_gradients(self) -> tuple[list[tuple[torch.Tensor, list[torch.Tensor]]], list[torch.Tensor]] | None:
        """The user tables' rows of the batch's users, the item tables' rows of its positives and
        negatives (the rating tables' positives among them), and the MLP's gradients."""
        if self._touched is None:
            return None
        user_grads, item_grads, dense = self._row_tables
        users, items = self._touched
        return [(users, user_grads), (items, item_grads)], dense

    @functools.cached_property
    def _row_tables(self) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        """The gradients of the tables indexed by user, of those indexed by item, and the rest."""
        net, grad_of = self.network, self.flat.grad_of
        user_tables, item_tables = net.table_weights("users"), net.table_weights("items")
        tables = {id(t) for t in user_tables + item_tables}
        dense = [grad_of(p) for p in net.parameters() if id(p) not in tables]
        return [grad_of(t) for t in user_tables], [grad_of(t) for t in item_tables], dense

    @torch.no_grad()
    def gradients(self, batch: Batch) -> torch.Tensor:
        """Fill the flat gradient buffers for one batch; returns ``[L_F, L_R, loss]`` (watch, rating, joint)."""
        net, flat, objective = self.network, self.flat, self.objective
        users, positives, negatives = batch.users, batch.positives, batch.negatives
        size = len(users)
        count = batch.denominator
        weight_f = objective.weight("watch")
        several = negatives.dim() == 2
        k = negatives.shape[1] if several else 1
        negatives_flat = negatives.reshape(-1)
        both = torch.cat([positives, negatives_flat])
        u = net.user_embeddings.weight.index_select(0, users)
        q = net.item_embeddings.weight.index_select(0, both)
        q_pos, q_neg = q[:size], q[size:]
        item_bias = net.item_biases.weight.view(-1).index_select(0, both)
        # p+ - p-: the user's bias cancels, so it never receives a gradient from L_F.
        if several:
            q_diff = q_pos.unsqueeze(1) - q_neg.view(size, k, q.shape[1])  # sizes spelled out: a share may be empty
            margin = (q_diff * u.unsqueeze(1)).sum(2) + item_bias[:size, None] - item_bias[size:].view(size, k)
        else:
            q_diff = q_pos - q_neg
            margin = (q_diff * u).sum(1) + item_bias[:size] - item_bias[size:]
        sigma = torch.sigmoid(margin)
        terms_f, d_terms = FUSED_WATCH_LOSSES[objective.tasks["watch"].component()](margin, sigma)
        d_margin = d_terms * (weight_f / (count * k))
        loss_f = terms_f.mean() if batch.count is None else terms_f.sum() / (count * k)

        flat.zero_grad()
        if several:
            d_u = (d_margin.unsqueeze(2) * q_diff).sum(1)
            d_q_neg = (d_margin.unsqueeze(2) * u.unsqueeze(1)).reshape(size * k, q.shape[1])
            d_q_pos = d_q_neg.view(size, k, q.shape[1]).sum(1)
            d_bias_pos, d_bias_neg = d_margin.sum(1), d_margin.reshape(-1)
        else:
            d_margin = d_margin.unsqueeze(1)
            d_u = d_margin * q_diff
            d_q_pos = d_margin * u  # and -d_q_pos for the negatives
            d_q_neg = d_q_pos
            d_bias_pos = d_bias_neg = d_margin.view(-1)
        loss_r, d_q_pos_total = self._add_rating(batch, u, q_pos, d_u, d_q_pos)
        self._scatter(users, positives, negatives_flat, d_u, d_q_pos_total, d_q_neg, d_bias_pos, d_bias_neg)
        loss = weight_f * loss_f + objective.weight("rating") * loss_r
        self._touched = (users, both)
        return torch.stack([loss_f, loss_r, loss])

    def _add_rating(
        self, batch: Batch, u: torch.Tensor, q_pos: torch.Tensor, d_u: torch.Tensor, d_q_pos: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """L_R of the batch (0 without ratings), its gradients added: to ``d_u`` in place and to the
        returned positives' item gradient under hard sharing, to the rating tables otherwise."""
        net, flat = self.network, self.flat
        users, positives, ratings, count = batch.users, batch.positives, batch.ratings, batch.denominator
        if ratings is None:
            return torch.zeros((), device=u.device), d_q_pos
        if net.embedding_sharing:
            u_r, q_r = u, q_pos
        else:
            u_r = net.rating_user_embeddings.weight.index_select(0, users)
            q_r = net.rating_item_embeddings.weight.index_select(0, positives)
        loss_r, d_u_r, d_q_r = self._rating_gradients(u_r, q_r, users, positives, ratings, count, batch.count is None)
        if net.embedding_sharing:
            d_u += d_u_r
            return loss_r, d_q_pos + d_q_r
        flat.grad_of(net.rating_user_embeddings.weight).index_add_(0, users, d_u_r)
        flat.grad_of(net.rating_item_embeddings.weight).index_add_(0, positives, d_q_r)
        return loss_r, d_q_pos

    def _scatter(self, users, positives, negatives, d_u, d_q_pos, d_q_neg, d_bias_pos, d_bias_neg) -> None:
        """Add the rows' gradients into the flat buffer: the users', the positives' and the negatives' (subtracted)."""
        net, flat = self.network, self.flat
        flat.grad_of(net.user_embeddings.weight).index_add_(0, users, d_u)
        item_grad = flat.grad_of(net.item_embeddings.weight)
        item_grad.index_add_(0, positives, d_q_pos)
        # index_add_ with alpha != 1 takes a path several times slower; negating first is exact.
        item_grad.index_add_(0, negatives, d_q_neg.neg())
        bias_grad = flat.grad_of(net.item_biases.weight).view(-1)
        bias_grad.index_add_(0, positives, d_bias_pos)
        bias_grad.index_add_(0, negatives, d_bias_neg.neg())

    def _rating_gradients(
        self,
        u: torch.Tensor,
        q: torch.Tensor,
        users: torch.Tensor,
        items: torch.Tensor,
        ratings: torch.Tensor,
        count: int,
        local: bool,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """L_R and its gradients: the MLP's and the rating biases' (written to the flat buffer), and those of u and q."""
        net = self.network
        d = u.shape[1]
        inputs = [torch.cat([u, q, u * q], dim=1)]
        pre_activations = []
        for index, layer in enumerate(self.linears):
            pre = torch.addmm(layer.bias, inputs[-1], layer.weight.T)
            pre_activations.append(pre)
            if index < len(self.linears) - 1:
                inputs.append(pre.clamp_min(0.0))
        r_hat = pre_activations[-1].view(-1)
        if net.rating_bias:
            user_bias, item_bias = net.rating_user_biases.weight.view(-1), net.rating_item_biases.weight.view(-1)
            r_hat = r_hat + user_bias.index_select(0, users) + item_bias.index_select(0, items)
        error = r_hat - ratings
        loss_r = error.square().mean() if local else error.square().sum() / count
        grad = (error * (2.0 * self.objective.weight("rating") / count)).unsqueeze(1)
        if net.rating_bias:
            self.flat.grad_of(net.rating_user_biases.weight).view(-1).index_add_(0, users, grad.view(-1))
            self.flat.grad_of(net.rating_item_biases.weight).view(-1).index_add_(0, items, grad.view(-1))
        for index in range(len(self.linears) - 1, -1, -1):
            layer = self.linears[index]
            torch.mm(grad.T, inputs[index], out=self.flat.grad_of(layer.weight))
            torch.sum(grad, 0, out=self.flat.grad_of(layer.bias))
            # A one-output layer's input gradient is an outer product: a broadcast, not a matmul.
            grad = grad * layer.weight if layer.weight.shape[0] == 1 else grad @ layer.weight
            if index > 0:
                # ReLU's derivative in one fused pass: zero where the activation is 0.
                grad = torch.ops.aten.threshold_backward(grad, inputs[index], 0.0)
        d_u = grad[:, :d] + grad[:, 2 * d :] * q
        d_q = grad[:, d : 2 * d] + grad[:, 2 * d :] * u
        return loss_r, d_u, d_q


def resolve_step(kind: str, network: nn.Module, objective: JointObjective) -> str:
    """What ``kind`` (``auto``, ``fused`` or ``autograd``) means for this network and objective."""
    if kind not in STEPS:
        raise ConfigError(f"unknown training step {kind!r}; use one of {', '.join(STEPS)}")
    if kind == "autograd" or (kind == "auto" and not FusedStep.supports(network, objective)):
        return "autograd"
    return "fused"


def make_step(
    kind: str,
    network: nn.Module,
    objective: JointObjective,
    learning_rate: float,
    weight_decay: float | dict[str, float] = 0.0,
) -> Step:
    """The training step ``kind`` asks for: ``"fused"``, ``"autograd"``, or ``"auto"`` (fused where supported).

    In a run of a stacked group (:mod:`mtrec.train.stacked`) the fused step joins the group; a run
    whose step is the autograd one trains alone.
    """
    seat = current_seat()
    if resolve_step(kind, network, objective) == "autograd":
        if seat is not None:
            seat.release()
        return AutogradStep(network, objective, learning_rate, weight_decay)
    if seat is not None:
        return seat.member(network, objective, learning_rate, weight_decay)
    return FusedStep(network, objective, learning_rate, weight_decay)
