"""The training step, written out by hand.

At batch 256 a training step is a few hundred microseconds of arithmetic buried under the
per-operation overhead of autograd and of the optimiser's bookkeeping. This module removes
both without changing the mathematics:

* every parameter of the network lives in one flat buffer (the module's tensors become views
  of it), so Adam's fused kernel updates the whole model in one call;
* the forward pass scores positives and negatives together, and the gradients of the joint
  loss are computed analytically (the model is small enough to write them down), with no
  autograd graph.

``tests/test_training.py`` checks the gradients against autograd on the same loss.
"""

from __future__ import annotations

import torch
from torch import nn

from mtrec.network import MultitaskNet


class FlatParameters:
    """Moves a module's parameters into one flat buffer with a matching flat gradient.

    After construction each parameter of ``module`` is a view of :attr:`values`, and
    :meth:`grad_of` gives the matching view of :attr:`grads`.
    """

    def __init__(self, module: nn.Module) -> None:
        params = list(module.parameters())
        self.values = nn.Parameter(torch.cat([p.detach().reshape(-1) for p in params]))
        self.values.grad = torch.zeros_like(self.values)
        self._grads: dict[int, torch.Tensor] = {}
        offset = 0
        for param in params:
            size = param.numel()
            param.data = self.values.data[offset : offset + size].view_as(param)
            self._grads[id(param)] = self.values.grad[offset : offset + size].view_as(param)
            offset += size

    @property
    def grads(self) -> torch.Tensor:
        return self.values.grad

    def grad_of(self, param: torch.Tensor) -> torch.Tensor:
        return self._grads[id(param)]


def _adam(values: nn.Parameter, learning_rate: float, l2: float) -> torch.optim.Adam:
    """Adam over one flat tensor: the fused kernel, or the multi-tensor one where this PyTorch has none."""
    try:
        return torch.optim.Adam([values], lr=learning_rate, weight_decay=l2, fused=True)
    except RuntimeError:  # fused Adam on the CPU needs PyTorch >= 2.4
        return torch.optim.Adam([values], lr=learning_rate, weight_decay=l2, foreach=True)


class TrainingStep:
    """One optimiser step of the joint loss λF·L_F + λR·L_R with Adam.

    Parameters
    ----------
    network:
        The network to train; its parameters are moved into a flat buffer.
    factorization_weight, regression_weight:
        λF and λR.
    learning_rate, l2:
        Adam's learning rate and weight decay.
    """

    def __init__(
        self,
        network: MultitaskNet,
        factorization_weight: float,
        regression_weight: float,
        learning_rate: float,
        l2: float,
    ) -> None:
        self.network = network
        self.weight_f = float(factorization_weight)
        self.weight_r = float(regression_weight)
        self.flat = FlatParameters(network)
        self.optimizer = _adam(self.flat.values, learning_rate, l2)
        self.linears = [layer for layer in network.rating_mlp if isinstance(layer, nn.Linear)]

    @torch.no_grad()
    def __call__(
        self, users: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor, ratings: torch.Tensor | None
    ) -> torch.Tensor:
        """Take one step; returns the batch's ``[L_F, L_R, loss]`` (L_R is 0 without ratings)."""
        gradients = self.gradients(users, positives, negatives, ratings)
        self.optimizer.step()
        return gradients

    @torch.no_grad()
    def gradients(
        self, users: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor, ratings: torch.Tensor | None
    ) -> torch.Tensor:
        """Fill the flat gradient buffer for one batch; returns ``[L_F, L_R, loss]``."""
        net, flat = self.network, self.flat
        batch = len(users)
        both = torch.cat([positives, negatives])
        u = net.user_embeddings.weight.index_select(0, users)
        q = net.item_embeddings.weight.index_select(0, both)
        q_pos, q_neg = q[:batch], q[batch:]
        item_bias = net.item_biases.weight.view(-1).index_select(0, both)
        # p+ - p-: the user's bias cancels, so it never receives a gradient from L_F.
        q_diff = q_pos - q_neg
        margin = (q_diff * u).sum(1) + item_bias[:batch] - item_bias[batch:]
        sigma = torch.sigmoid(margin)
        loss_f = (1.0 - sigma).mean()
        d_margin = (sigma * (sigma - 1.0) * (self.weight_f / batch)).unsqueeze(1)

        flat.grads.zero_()
        d_u = d_margin * q_diff
        d_q_pos = d_margin * u  # and -d_q_pos for the negatives
        d_q_pos_total = d_q_pos
        loss_r = torch.zeros((), device=u.device)
        if ratings is not None:
            if net.embedding_sharing:
                u_r, q_r = u, q_pos
            else:
                u_r = net.rating_user_embeddings.weight.index_select(0, users)
                q_r = net.rating_item_embeddings.weight.index_select(0, positives)
            loss_r, d_u_r, d_q_r = self._rating_gradients(u_r, q_r, ratings)
            if net.embedding_sharing:
                d_u += d_u_r
                d_q_pos_total = d_q_pos + d_q_r
            else:
                flat.grad_of(net.rating_user_embeddings.weight).index_add_(0, users, d_u_r)
                flat.grad_of(net.rating_item_embeddings.weight).index_add_(0, positives, d_q_r)
        flat.grad_of(net.user_embeddings.weight).index_add_(0, users, d_u)
        item_grad = flat.grad_of(net.item_embeddings.weight)
        item_grad.index_add_(0, positives, d_q_pos_total)
        # index_add_ with alpha != 1 takes a path several times slower; negating first is exact.
        item_grad.index_add_(0, negatives, d_q_pos.neg())
        bias_grad = flat.grad_of(net.item_biases.weight).view(-1)
        bias_grad.index_add_(0, positives, d_margin.view(-1))
        bias_grad.index_add_(0, negatives, d_margin.view(-1).neg())
        loss = self.weight_f * loss_f + self.weight_r * loss_r
        return torch.stack([loss_f, loss_r, loss])

    def _rating_gradients(
        self, u: torch.Tensor, q: torch.Tensor, ratings: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """L_R and its gradients: the MLP's (written to the flat buffer), and those of u and q."""
        d = u.shape[1]
        inputs = [torch.cat([u, q, u * q], dim=1)]
        pre_activations = []
        for index, layer in enumerate(self.linears):
            pre = torch.addmm(layer.bias, inputs[-1], layer.weight.T)
            pre_activations.append(pre)
            if index < len(self.linears) - 1:
                inputs.append(pre.clamp_min(0.0))
        error = pre_activations[-1].view(-1) - ratings
        loss_r = error.square().mean()
        grad = (error * (2.0 * self.weight_r / len(ratings))).unsqueeze(1)
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
