"""Multi-task weighting: how the watch loss L_F and the rating loss L_R become one update.

Two kinds. Loss weightings join the losses into one scalar that autograd differentiates:

* ``fixed``: λF·L_F + λR·L_R (the seed's);
* ``uncertainty`` (Kendall, Gal & Cipolla 2018): Σ_t exp(−s_t)·L_t + s_t with learned s_t, whose
  optimum for given losses is s_t = log L_t, that is task weights exp(−s_t) = 1 / L_t.

Gradient combinations see each task's gradient of the *shared* parameters (those both losses
reach) and combine them; a task's own parameters keep their own task's gradient:

* ``pcgrad`` (Yu et al. 2020): where g_F·g_R < 0, each is projected onto the other's normal
  plane before they are added; aligned gradients are added as they are;
* ``mgda`` (Sener & Koltun 2018): the minimum-norm point of the segment between g_F and g_R,
  α·g_F + (1 − α)·g_R with α = clip((g_R − g_F)·g_R / |g_F − g_R|², 0, 1) (the two-task closed form);
* ``gradnorm`` (Chen et al. 2018): learned task weights w_t (summing to 2) that pull the
  weighted gradient norms |w_t·g_t| towards their mean times (r_t)^α, r_t being the task's
  loss relative to its first value, divided by the mean of those.

λF and λR weight the losses for ``fixed`` and ``pcgrad``; the other methods set their own
weights, and a λ of 0 still switches its task off.
"""

from __future__ import annotations

import torch
from torch import nn

from mtrec.registry import Registry


def pcgrad(g_f: torch.Tensor, g_r: torch.Tensor) -> torch.Tensor:
    """PCGrad's combination of two task gradients (flat tensors)."""
    dot = torch.dot(g_f, g_r)
    if dot >= 0:
        return g_f + g_r
    f = g_f - dot / g_r.square().sum().clamp_min(1e-20) * g_r
    r = g_r - dot / g_f.square().sum().clamp_min(1e-20) * g_f
    return f + r


def mgda_alpha(g_f: torch.Tensor, g_r: torch.Tensor) -> float:
    """The weight of g_F in the minimum-norm combination α·g_F + (1 − α)·g_R."""
    difference = g_f - g_r
    norm = difference.square().sum()
    if norm == 0:
        return 0.5
    return float((torch.dot(g_r - g_f, g_r) / norm).clamp(0.0, 1.0))


class TaskWeighting(nn.Module):
    """Base class: holds λF and λR; learned weightings hold their parameters as a module does."""

    gradient_method = False

    def __init__(self, factorization_weight: float, regression_weight: float) -> None:
        super().__init__()
        self.weights = (float(factorization_weight), float(regression_weight))

    def combine(self, loss_f: torch.Tensor, loss_r: torch.Tensor) -> torch.Tensor:
        """The scalar to differentiate (loss weightings), or the loss to report (gradient methods)."""
        return self.weights[0] * loss_f + self.weights[1] * loss_r

    def task_weights(self) -> tuple[float, float]:
        """The weights of (L_F, L_R) in effect now."""
        return self.weights

    def extra_state(self) -> dict:
        """State that is not a parameter (GradNorm's weights...), as JSON, for checkpoints."""
        return {}

    def load_extra_state(self, state: dict) -> None:
        pass

    @classmethod
    def build(cls, factorization_weight: float, regression_weight: float, gradnorm_alpha: float) -> TaskWeighting:
        """The weighting for these λs (and GradNorm's α, which only it reads)."""
        return cls(factorization_weight, regression_weight)


#: The weighting methods by name, in the order the study and the command line list them (:mod:`mtrec.registry`).
WEIGHTINGS: Registry[type[TaskWeighting]] = Registry("weighting")


@WEIGHTINGS.register("fixed")
class Fixed(TaskWeighting):
    """λF·L_F + λR·L_R."""


@WEIGHTINGS.register("uncertainty")
class Uncertainty(TaskWeighting):
    """Σ_t exp(−s_t)·L_t + s_t over the tasks with a non-zero λ, s_t learned (starting at 0)."""

    def __init__(self, factorization_weight: float, regression_weight: float) -> None:
        super().__init__(factorization_weight, regression_weight)
        self.log_variances = nn.Parameter(torch.zeros(2))

    def combine(self, loss_f: torch.Tensor, loss_r: torch.Tensor) -> torch.Tensor:
        s = self.log_variances
        total = torch.zeros((), device=loss_f.device)
        for index, loss in enumerate((loss_f, loss_r)):
            if self.weights[index] > 0:
                total = total + torch.exp(-s[index]) * loss + s[index]
        return total

    def task_weights(self) -> tuple[float, float]:
        weights = torch.exp(-self.log_variances.detach()).tolist()
        return tuple(w if self.weights[i] > 0 else 0.0 for i, w in enumerate(weights))


class GradientCombination(TaskWeighting):
    """A weighting that combines the tasks' gradients of the shared parameters."""

    gradient_method = True

    def shared(self, g_f: torch.Tensor, g_r: torch.Tensor, losses: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """The update direction of the shared parameters, from both tasks' gradients (flat)."""
        raise NotImplementedError

    def own(self, task: int, gradient: torch.Tensor) -> torch.Tensor:
        """The update direction of parameters only task ``task`` reaches."""
        return gradient


@WEIGHTINGS.register("gradnorm")
class GradNorm(GradientCombination):
    """GradNorm with asymmetry ``alpha`` and its weights' own learning rate."""

    @classmethod
    def build(cls, factorization_weight: float, regression_weight: float, gradnorm_alpha: float) -> TaskWeighting:
        return cls(factorization_weight, regression_weight, gradnorm_alpha)

    def __init__(self, factorization_weight: float, regression_weight: float, alpha: float = 1.5, rate: float = 0.025):
        super().__init__(factorization_weight, regression_weight)
        active = [w > 0 for w in self.weights]
        self.w = torch.tensor([1.0 if a else 0.0 for a in active])
        self.w *= 2.0 / self.w.sum().clamp_min(1e-12)
        self.alpha, self.rate = float(alpha), float(rate)
        self.initial: torch.Tensor | None = None

    def shared(self, g_f, g_r, losses):
        current = torch.stack([loss.detach() for loss in losses]).to(self.w.device)
        if self.initial is None:
            self.initial = current.clamp_min(1e-12)
        norms = torch.stack([g_f.norm(), g_r.norm()]).to(self.w.device)
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
        return self.w[0] * g_f + self.w[1] * g_r

    def own(self, task, gradient):
        return self.w[task] * gradient

    def task_weights(self) -> tuple[float, float]:
        return tuple(self.w.tolist())

    def extra_state(self) -> dict:
        return {"w": self.w.tolist(), "initial": None if self.initial is None else self.initial.tolist()}

    def load_extra_state(self, state: dict) -> None:
        if "w" in state:
            self.w = torch.tensor(state["w"])
            self.initial = None if state.get("initial") is None else torch.tensor(state["initial"])


@WEIGHTINGS.register("pcgrad")
class PCGrad(GradientCombination):
    def shared(self, g_f, g_r, losses):
        return pcgrad(self.weights[0] * g_f, self.weights[1] * g_r)

    def own(self, task, gradient):
        return self.weights[task] * gradient


@WEIGHTINGS.register("mgda")
class MGDA(GradientCombination):
    def __init__(self, factorization_weight: float, regression_weight: float) -> None:
        super().__init__(factorization_weight, regression_weight)
        self.alpha = 0.5

    def shared(self, g_f, g_r, losses):
        if self.weights[1] == 0:
            self.alpha = 1.0
        elif self.weights[0] == 0:
            self.alpha = 0.0
        else:
            self.alpha = mgda_alpha(g_f, g_r)
        return self.alpha * g_f + (1.0 - self.alpha) * g_r

    def own(self, task, gradient):
        return gradient if self.weights[task] > 0 else torch.zeros_like(gradient)

    def task_weights(self) -> tuple[float, float]:
        return self.alpha, 1.0 - self.alpha

    def extra_state(self) -> dict:
        return {"alpha": self.alpha}

    def load_extra_state(self, state: dict) -> None:
        self.alpha = state.get("alpha", self.alpha)


def make_weighting(name: str, factorization_weight: float, regression_weight: float, gradnorm_alpha: float = 1.5) -> TaskWeighting:
    """The weighting called ``name`` (a :class:`~mtrec.errors.ConfigError` listing the registered ones if there is none)."""
    return WEIGHTINGS[name].build(factorization_weight, regression_weight, gradnorm_alpha)
