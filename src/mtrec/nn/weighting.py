"""Multi-task weighting: how the tasks' losses (L_F of ``watch``, L_R of ``rating``, any others) become one update.

Two kinds. Loss weightings join the losses into one scalar that autograd differentiates:

* ``fixed``: λF·L_F + λR·L_R (the seed's);
* ``uncertainty`` (Kendall, Gal & Cipolla 2018): Σ_t exp(−s_t)·L_t + s_t with learned s_t, whose
  optimum for given losses is s_t = log L_t, that is task weights exp(−s_t) = 1 / L_t.

Gradient combinations see the tasks' gradients of the *shared* parameters (those more than one
task's loss reaches) as a task × parameter matrix, as LibMTL does, and combine its rows; a
parameter only one task reaches keeps that task's gradient:

* ``pcgrad`` (Yu et al. 2020): each task's gradient is projected onto the normal plane of every
  other task's gradient it conflicts with (g_i·g_j < 0), in the tasks' order, before they are
  added; aligned gradients are added as they are;
* ``mgda`` (Sener & Koltun 2018): the minimum-norm point of the tasks' gradients' convex hull:
  for two tasks α·g_F + (1 − α)·g_R with α = clip((g_R − g_F)·g_R / |g_F − g_R|², 0, 1) (the
  closed form), for more the Frank–Wolfe solver of the paper;
* ``gradnorm`` (Chen et al. 2018): learned task weights w_t (summing to the number of tasks with a non-zero λ) that pull the
  weighted gradient norms |w_t·g_t| towards their mean times (r_t)^α, r_t being the task's
  loss relative to its first value, divided by the mean of those.

The λs weight the losses for ``fixed`` and ``pcgrad``; the other methods set their own
weights, and a λ of 0 still switches its task off. Weights are keyed by task name.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from mtrec.registry import Registry


def pcgrad(gradients: Sequence[torch.Tensor]) -> torch.Tensor:
    """PCGrad's combination of the tasks' gradients (flat tensors, one per task)."""
    projected = []
    for i, gradient in enumerate(gradients):
        for j, other in enumerate(gradients):
            if j != i:
                dot = torch.dot(gradient, other)
                if dot < 0:
                    gradient = gradient - dot / other.square().sum().clamp_min(1e-20) * other
        projected.append(gradient)
    total = projected[0]
    for gradient in projected[1:]:
        total = total + gradient
    return total


def weighted_sum(tensors: Sequence[torch.Tensor], weights: Sequence[float | torch.Tensor]) -> torch.Tensor:
    """Σ_t w_t·x_t, in the tasks' order."""
    total = weights[0] * tensors[0]
    for weight, tensor in zip(weights[1:], tensors[1:]):
        total = total + weight * tensor
    return total


def mgda_alpha(g_f: torch.Tensor, g_r: torch.Tensor) -> float:
    """The weight of g_F in the minimum-norm combination α·g_F + (1 − α)·g_R."""
    difference = g_f - g_r
    norm = difference.square().sum()
    if norm == 0:
        return 0.5
    return float((torch.dot(g_r - g_f, g_r) / norm).clamp(0.0, 1.0))


def min_norm_weights(gradients: torch.Tensor, iterations: int = 250, tolerance: float = 1e-6) -> list[float]:
    """The convex weights of the rows of ``gradients`` (tasks × parameters) whose combination has the
    least norm: the two-task closed form, or Frank–Wolfe on the rows' Gram matrix for more."""
    count = gradients.shape[0]
    if count == 1:
        return [1.0]
    if count == 2:
        alpha = mgda_alpha(gradients[0], gradients[1])
        return [alpha, 1.0 - alpha]
    gram = (gradients @ gradients.T).double().cpu()  # tasks x tasks: small, solved on the CPU
    weights = torch.full((count,), 1.0 / count, dtype=torch.float64)
    for _ in range(iterations):
        corner = int(torch.argmin(gram @ weights))
        # the minimum of |(1 − γ)·v + γ·g_corner|² over γ in [0, 1], v the current combination
        vv, vc, cc = weights @ gram @ weights, weights @ gram[:, corner], gram[corner, corner]
        denominator = vv - 2 * vc + cc
        gamma = 1.0 if denominator <= 0 else float(((vv - vc) / denominator).clamp(0.0, 1.0))
        step = torch.zeros_like(weights)
        step[corner] = 1.0
        updated = (1 - gamma) * weights + gamma * step
        change = float((updated - weights).abs().sum())
        weights = updated
        if change < tolerance:
            break
    return weights.tolist()


class TaskWeighting(nn.Module):
    """Base class: holds the tasks' λs by name; learned weightings hold their parameters as a module does."""

    gradient_method = False

    def __init__(self, weights: Mapping[str, float]) -> None:
        super().__init__()
        self.names = tuple(weights)
        self.weights = tuple(float(weights[name]) for name in self.names)

    def combine(self, losses: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The scalar to differentiate (loss weightings), or the loss to report (gradient methods)."""
        return weighted_sum([losses[name] for name in self.names], self.weights)

    def task_weights(self) -> dict[str, float]:
        """The weights of the tasks' losses in effect now, by task."""
        return dict(zip(self.names, self.weights))

    def extra_state(self) -> dict:
        """State that is not a parameter (GradNorm's weights...), as JSON, for checkpoints."""
        return {}

    def load_extra_state(self, state: dict) -> None:
        pass

    @classmethod
    def build(cls, weights: Mapping[str, float], gradnorm_alpha: float) -> TaskWeighting:
        """The weighting for these λs (and GradNorm's α, which only it reads)."""
        return cls(weights)


#: The weighting methods by name, in the order the study and the command line list them (:mod:`mtrec.registry`).
WEIGHTINGS: Registry[type[TaskWeighting]] = Registry("weighting")


@WEIGHTINGS.register("fixed")
class Fixed(TaskWeighting):
    """Σ_t λ_t·L_t."""


@WEIGHTINGS.register("uncertainty")
class Uncertainty(TaskWeighting):
    """Σ_t exp(−s_t)·L_t + s_t over the tasks with a non-zero λ, s_t learned (starting at 0)."""

    def __init__(self, weights: Mapping[str, float]) -> None:
        super().__init__(weights)
        self.log_variances = nn.Parameter(torch.zeros(len(self.names)))

    def combine(self, losses: Mapping[str, torch.Tensor]) -> torch.Tensor:
        s = self.log_variances
        total = torch.zeros((), device=next(iter(losses.values())).device)
        for index, name in enumerate(self.names):
            if self.weights[index] > 0:
                total = total + torch.exp(-s[index]) * losses[name] + s[index]
        return total

    def task_weights(self) -> dict[str, float]:
        weights = torch.exp(-self.log_variances.detach()).tolist()
        return {name: w if self.weights[i] > 0 else 0.0 for i, (name, w) in enumerate(zip(self.names, weights))}


class GradientCombination(TaskWeighting):
    """A weighting that combines the tasks' gradients of the shared parameters."""

    gradient_method = True

    def shared(self, gradients: torch.Tensor, losses: Sequence[torch.Tensor]) -> torch.Tensor:
        """The update direction of the shared parameters from the tasks × parameters matrix of their
        gradients (rows in the tasks' order; a task that does not reach a parameter has 0 there)."""
        raise NotImplementedError

    def own(self, task: int, gradient: torch.Tensor) -> torch.Tensor:
        """The update direction of parameters only the ``task``-th task reaches."""
        return gradient


@WEIGHTINGS.register("gradnorm")
class GradNorm(GradientCombination):
    """GradNorm with asymmetry ``alpha`` and its weights' own learning rate."""

    @classmethod
    def build(cls, weights: Mapping[str, float], gradnorm_alpha: float) -> TaskWeighting:
        return cls(weights, gradnorm_alpha)

    def __init__(self, weights: Mapping[str, float], alpha: float = 1.5, rate: float = 0.025):
        super().__init__(weights)
        active = [w > 0 for w in self.weights]
        self.w = torch.tensor([1.0 if a else 0.0 for a in active])
        self.w *= float(len(self.weights)) / self.w.sum().clamp_min(1e-12)
        self.alpha, self.rate = float(alpha), float(rate)
        self.initial: torch.Tensor | None = None

    def shared(self, gradients, losses):
        current = torch.stack([loss.detach() for loss in losses]).to(self.w.device)
        if self.initial is None:
            self.initial = current.clamp_min(1e-12)
        norms = torch.stack([g.norm() for g in gradients]).to(self.w.device)
        active = self.w > 0
        weighted = self.w * norms
        ratio = current / self.initial
        relative = ratio / ratio[active].mean()
        target = weighted[active].mean() * relative**self.alpha
        # d/dw_t of Σ |w_t·n_t − target_t| (the target held constant, as the paper does), with the
        # norms taken relative to their mean so that the weights' step does not depend on their scale.
        step = torch.sign(weighted - target) * norms / norms[active].mean().clamp_min(1e-20)
        self.w = torch.where(active, (self.w - self.rate * step).clamp_min(1e-3), self.w)
        self.w *= active.sum() / self.w[active].sum()
        return weighted_sum(list(gradients), list(self.w))

    def own(self, task, gradient):
        return self.w[task] * gradient

    def task_weights(self) -> dict[str, float]:
        return dict(zip(self.names, self.w.tolist()))

    def extra_state(self) -> dict:
        return {"w": self.w.tolist(), "initial": None if self.initial is None else self.initial.tolist()}

    def load_extra_state(self, state: dict) -> None:
        if "w" in state:
            self.w = torch.tensor(state["w"])
            self.initial = None if state.get("initial") is None else torch.tensor(state["initial"])


@WEIGHTINGS.register("pcgrad")
class PCGrad(GradientCombination):
    def shared(self, gradients, losses):
        return pcgrad([weight * gradient for weight, gradient in zip(self.weights, gradients)])

    def own(self, task, gradient):
        return self.weights[task] * gradient


@WEIGHTINGS.register("mgda")
class MGDA(GradientCombination):
    def __init__(self, weights: Mapping[str, float]) -> None:
        super().__init__(weights)
        active = [w > 0 for w in self.weights]
        self.alphas = [1.0 / sum(active) if a else 0.0 for a in active]

    def shared(self, gradients, losses):
        active = [index for index, weight in enumerate(self.weights) if weight > 0]
        solved = min_norm_weights(gradients[active])
        self.alphas = [0.0] * len(self.weights)
        for index, alpha in zip(active, solved):
            self.alphas[index] = alpha
        return weighted_sum(list(gradients), self.alphas)

    def own(self, task, gradient):
        return gradient if self.weights[task] > 0 else torch.zeros_like(gradient)

    def task_weights(self) -> dict[str, float]:
        return dict(zip(self.names, self.alphas))

    def extra_state(self) -> dict:
        return {"alphas": self.alphas}

    def load_extra_state(self, state: dict) -> None:
        if "alphas" in state:
            self.alphas = [float(a) for a in state["alphas"]]
        elif "alpha" in state:  # a checkpoint of mtrec 0.2: two tasks, the first's weight
            self.alphas = [float(state["alpha"]), 1.0 - float(state["alpha"])]


def make_weighting(name: str, weights: Mapping[str, float], gradnorm_alpha: float = 1.5) -> TaskWeighting:
    """The weighting called ``name`` (a :class:`~mtrec.errors.ConfigError` listing the registered ones if there is none)."""
    return WEIGHTINGS[name].build(weights, gradnorm_alpha)
