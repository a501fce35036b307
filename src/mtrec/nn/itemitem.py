"""The item-item path of the watch head: an items × items matrix B applied to a user's history.

The watch score of a network made with ``item_item=True`` is ``u·q + a + b + w · Σ_{j∈N(u)} B[j, i]``
(:meth:`MultitaskNet.item_item_scores <mtrec.nn.network.MultitaskNet.item_item_scores>`). B is
EASE's closed form (Steck 2019, :func:`ease_matrix`): the ridge regression of every item's column
of the user × item matrix X on the others, ``B = I − P / diag(P)`` with ``P = (XᵀX + λI)⁻¹`` and a
zero diagonal, so that no item predicts itself. It is not trained by gradient: after the
factorisation part has trained, λ and w are chosen on validation data
(:func:`mtrec.train.itemitem.choose_item_item`), as VASP joins an EASE-like path to a deep one.
"""

from __future__ import annotations

import torch

from mtrec.errors import ConfigError

#: The largest catalogue the path is made for: B takes items² floats (20,000 items: 1.6 GB).
MAX_ITEM_ITEM = 20_000


def check_item_item(num_items: int) -> None:
    """:class:`ConfigError` for a catalogue too large for an items × items matrix."""
    if num_items > MAX_ITEM_ITEM:
        gigabytes = num_items**2 * 4 / 1e9
        raise ConfigError(
            f"item_item needs an items x items matrix: {num_items:,} items would take {gigabytes:.1f} GB; "
            f"it is for catalogues of at most {MAX_ITEM_ITEM:,} items: give --no-item-item (the quality preset turns it on)"
        )


def gram_matrix(indptr: torch.Tensor, indices: torch.Tensor, num_items: int) -> torch.Tensor:
    """XᵀX of the binary user × item matrix X of the users' items (CSR), float64, on the CPU: item
    pairs' co-occurrence counts, made from the sparse X (never a dense users × items matrix)."""
    import numpy as np
    import scipy.sparse as sparse

    indptr, indices = indptr.cpu().numpy(), indices.cpu().numpy()
    x = sparse.csr_matrix((np.ones(len(indices)), indices, indptr), shape=(len(indptr) - 1, num_items))
    return torch.as_tensor((x.T @ x).toarray())


def ease_matrix(indptr: torch.Tensor, indices: torch.Tensor, num_items: int, l2: float, gram: torch.Tensor | None = None) -> torch.Tensor:
    """EASE's B for the users' items (CSR) and ridge penalty λ = ``l2`` > 0, float32, on the CPU.

    The Gram matrix XᵀX (:func:`gram_matrix`, or ``gram`` when already made) is inverted in float64.
    """
    if not l2 > 0:
        raise ConfigError(f"the item-item path's l2 must be a positive number, got {l2!r}")
    gram = (gram_matrix(indptr, indices, num_items) if gram is None else gram).clone()
    gram.diagonal().add_(float(l2))
    p = torch.linalg.inv(gram)
    b = -p / p.diagonal()
    b.fill_diagonal_(0.0)
    return b.float()
