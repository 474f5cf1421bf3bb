"""In-batch sampled softmax with log-Q correction (Yi et al., RecSys 2019).

In-batch negatives are sampled in proportion to popularity, which biases the softmax
toward down-ranking popular items; subtracting ``log q(item)`` from each logit removes
that bias. Optional uniform negatives add coverage of the tail.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812


def sampled_softmax_loss(
    user_vecs: torch.Tensor,
    item_vecs: torch.Tensor,
    item_ids: torch.Tensor,
    inv_temperature: torch.Tensor,
    *,
    log_q: torch.Tensor | None = None,
    extra_item_vecs: torch.Tensor | None = None,
    extra_log_q: torch.Tensor | None = None,
) -> torch.Tensor:
    """Cross-entropy of each row's positive against the batch's other items.

    ``item_ids`` masks accidental hits: another row with the same item is not a negative.
    """
    logits = user_vecs @ item_vecs.T * inv_temperature
    if log_q is not None:
        logits = logits - log_q.unsqueeze(0)
    same = item_ids.unsqueeze(0) == item_ids.unsqueeze(1)
    same.fill_diagonal_(False)
    logits = logits.masked_fill(same, torch.finfo(logits.dtype).min / 2)
    if extra_item_vecs is not None:
        extra = user_vecs @ extra_item_vecs.T * inv_temperature
        if extra_log_q is not None:
            extra = extra - extra_log_q.unsqueeze(0)
        logits = torch.cat([logits, extra], 1)
    labels = torch.arange(user_vecs.shape[0], device=user_vecs.device)
    return F.cross_entropy(logits.float(), labels)
