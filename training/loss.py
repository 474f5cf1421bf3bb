"""Sampled softmax with log-Q correction (Yi et al., RecSys 2019), one or many positives.

In-batch negatives are sampled in proportion to popularity, which biases the softmax
toward down-ranking popular items; subtracting ``log q(item)`` from each logit removes
that bias. Optional uniform negatives (the whole catalog, at most, which makes the loss a
full softmax) add coverage of the tail; their log-Q is the uniform one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812


def _extra_logits(
    user_vecs: torch.Tensor,
    inv_temperature: torch.Tensor,
    extra_item_vecs: torch.Tensor,
    extra_log_q: torch.Tensor | None,
    hits: torch.Tensor | None,
) -> torch.Tensor:
    extra = user_vecs @ extra_item_vecs.T * inv_temperature
    if extra_log_q is not None:
        extra = extra - extra_log_q.unsqueeze(0)
    if hits is not None:  # a sampled negative that is one of the row's positives is none
        extra = extra.masked_fill(hits, torch.finfo(extra.dtype).min / 2)
    return extra


def sampled_softmax_loss(
    user_vecs: torch.Tensor,
    item_vecs: torch.Tensor,
    item_ids: torch.Tensor,
    inv_temperature: torch.Tensor,
    *,
    log_q: torch.Tensor | None = None,
    extra_item_vecs: torch.Tensor | None = None,
    extra_log_q: torch.Tensor | None = None,
    extra_item_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """Cross-entropy of each row's positive against the batch's other items.

    ``item_ids`` masks accidental hits: another row with the same item is not a negative;
    with ``extra_item_ids``, neither is a uniform negative equal to the row's positive.
    """
    logits = user_vecs @ item_vecs.T * inv_temperature
    if log_q is not None:
        logits = logits - log_q.unsqueeze(0)
    same = item_ids.unsqueeze(0) == item_ids.unsqueeze(1)
    same.fill_diagonal_(False)
    logits = logits.masked_fill(same, torch.finfo(logits.dtype).min / 2)
    if extra_item_vecs is not None:
        hits = None
        if extra_item_ids is not None:
            hits = item_ids.unsqueeze(1) == extra_item_ids.unsqueeze(0)
        extra = _extra_logits(user_vecs, inv_temperature, extra_item_vecs, extra_log_q, hits)
        logits = torch.cat([logits, extra], 1)
    labels = torch.arange(user_vecs.shape[0], device=user_vecs.device)
    return F.cross_entropy(logits.float(), labels)


def multinomial_loss(
    user_vecs: torch.Tensor,
    item_vecs: torch.Tensor,
    positives: torch.Tensor,
    inv_temperature: torch.Tensor,
    *,
    log_q: torch.Tensor | None = None,
    extra_item_vecs: torch.Tensor | None = None,
    extra_log_q: torch.Tensor | None = None,
    extra_hits: torch.Tensor | None = None,
) -> torch.Tensor:
    """Multinomial likelihood of every user's positives (Mult-DAE/VAE, Liang et al. 2018).

    ``item_vecs`` are the batch's candidate items (the users' positives pooled: in-batch
    negatives for the other users), ``positives`` ``[users, candidates]`` marks each
    user's own; ``extra_*`` are uniform negatives (``extra_hits`` marks those that are a
    user's positive). Each (user, positive) pair counts once: the loss is the mean over
    pairs of ``-log softmax``, which is the in-batch softmax with several positives a row.
    """
    logits = user_vecs @ item_vecs.T * inv_temperature
    if log_q is not None:
        logits = logits - log_q.unsqueeze(0)
    if extra_item_vecs is not None:
        extra = _extra_logits(user_vecs, inv_temperature, extra_item_vecs, extra_log_q, extra_hits)
        logits = torch.cat([logits, extra], 1)
    logp = torch.log_softmax(logits.float(), dim=1)[:, : positives.shape[1]]
    weights = positives.to(logp.dtype)
    return -(logp * weights).sum() / weights.sum().clamp(min=1.0)
