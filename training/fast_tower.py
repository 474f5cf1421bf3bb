"""The user tower's forward pass in numpy, for serving's one-user requests.

For a batch of one, torch spends far more time dispatching its operators (a dozen of
them, each through autograd's and the dispatcher's bookkeeping) than computing: about
0.3 ms per request on a small CPU, against tens of microseconds for the same arithmetic
in numpy. :class:`FastUserTower` takes a snapshot of an evaluation-mode
:class:`~rtrec.training.model.TwoTower`'s weights (views, not copies) and computes
:meth:`TwoTower.query` of :meth:`TwoTower.user_tower` exactly as the module does in eval
mode: the same pooling, layer norm, exact (erf) GELU, normalisation and prior column,
in float32. The GELU is torch's own kernel on the numpy array (one operator, no copy:
about 10 µs, where a numpy erf took 45 µs of a 90 µs forward pass). Large batches stay
on torch, which is faster there.
"""

from __future__ import annotations

import numpy as np
import torch
from rtrec.training.model import TwoTower


class FastUserTower:
    """``TwoTower.query(TwoTower.user_tower(...))`` for small batches, in numpy."""

    MAX_BATCH = 16
    """Above this many users torch's vectorised kernels win: use the module."""

    def __init__(self, net: TwoTower) -> None:
        if net.training:
            raise ValueError("FastUserTower mirrors evaluation mode: call net.eval() first")
        cfg = net.cfg
        with torch.no_grad():

            def arr(t: torch.Tensor) -> np.ndarray:
                return t.detach().cpu().numpy()

            self.use_ids = cfg.user_id_dropout < 1
            self.user_emb = arr(net.user_emb.weight)
            self.hist_emb = arr(net.hist_emb.weight)
            length = cfg.history_len
            self.pos = (
                arr(torch.softmax(net.pos_weight[:length], 0) * length)
                if cfg.position_weights
                else None
            )
            norm = net.dense_norm
            self.norm = (
                (arr(norm.weight), arr(norm.bias), float(norm.eps)) if norm is not None else None
            )
            first, last = net.user_mlp[0], net.user_mlp[3]
            self.w1, self.b1 = arr(first.weight).T.copy(), arr(first.bias)
            self.w2, self.b2 = arr(last.weight).T.copy(), arr(last.bias)
            self.prior = float(net.pop_prior * net.log_pop_scale / net.inv_temperature)

    def __call__(self, user: np.ndarray, history: np.ndarray, dense: np.ndarray) -> np.ndarray:
        """``user`` [B] and ``history`` [B, L] (vocabulary rows, 0 = padding), ``dense``
        [B, F] float32 -> queries [B, dim + 1] float32."""
        mask = (history > 0).astype(np.float32)
        if self.pos is not None:
            mask *= self.pos[: history.shape[1]]
        pooled = np.einsum("bl,bld->bd", mask, self.hist_emb[history])
        pooled /= np.maximum(mask.sum(1, keepdims=True), 1e-6)
        ids = self.user_emb[user] if self.use_ids else self.user_emb[np.zeros_like(user)]
        parts = [ids, pooled]
        if self.norm is not None:
            gamma, beta, eps = self.norm
            mean = dense.mean(1, keepdims=True)
            var = ((dense - mean) ** 2).mean(1, keepdims=True)
            parts.append((dense - mean) / np.sqrt(var + eps) * gamma + beta)
        h = np.concatenate(parts, 1).astype(np.float32, copy=False) @ self.w1 + self.b1
        h = _gelu(h)
        out = h @ self.w2 + self.b2
        out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        col = np.full((out.shape[0], 1), self.prior, dtype=np.float32)
        return np.concatenate([out, col], 1).astype(np.float32, copy=False)


def _gelu(h: np.ndarray) -> np.ndarray:
    """The exact (erf) GELU of ``nn.GELU()``: torch's kernel on ``h``'s memory."""
    with torch.inference_mode():
        return torch.nn.functional.gelu(torch.from_numpy(h)).numpy()
