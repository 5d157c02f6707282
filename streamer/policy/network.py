"""The torch network that scores variants, and how scores become variant probabilities.

:func:`variant_probabilities` is the one definition of the published (and so logged)
propensities; the policy, the trainer's objective and off-policy evaluation all call it, so
what is evaluated is exactly what is served.

>>> import torch
>>> p = variant_probabilities(torch.tensor([[2.0, 0.0, -9.0, 1.0]]),
...                           torch.tensor([[True, True, True, False]]),
...                           temperature=1.0, floor=0.05, max_shown=None)
>>> [round(x, 3) for x in p[0].tolist()]
[0.799, 0.151, 0.05, 0.0]
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class VariantScorer(nn.Module):
    """A small MLP: a variant's feature vector ``[..., n_features]`` -> a score ``[...]``.

    The last layer starts at zero, so a fresh network scores every variant alike and its
    policy explores uniformly: the first logs then cover every action.

    With ``value_prior = (i, j)`` the score also has a term ``prior_scale x log(x[i] x
    expm1(x[j]) + 1e-6)``: the log of a direct-method value when feature ``i`` is a conversion
    probability and ``j`` a log1p price, so the policy starts from "show what the conversion
    model expects to earn most" and the network learns corrections to it. ``prior_scale`` is a
    trained parameter (starting at ``prior_scale``): training sharpens or flattens the prior.

    With ``one_hot = (i, levels)`` the network also reads which of ``levels`` feature ``i``
    equals, one input each: the discount's own scale (0 to 0.15) is too small for 200 steps
    to single out one level (the score came out nearly linear in it), so the first
    candidate kept most of its probability on discounts v0 never showed.

    >>> import math
    >>> scorer = VariantScorer(2, 4, value_prior=(0, 1), prior_scale=2.0)
    >>> x = torch.tensor([[0.1, math.log1p(10.0)], [0.1, math.log1p(20.0)]])
    >>> s = scorer(x).detach()
    >>> round(float(s[1] - s[0]), 4) == round(2 * math.log(2.0), 4)   # twice the value
    True
    """

    def __init__(
        self,
        n_features: int,
        hidden: int = 32,
        *,
        value_prior: tuple[int, int] | None = None,
        prior_scale: float = 1.0,
        one_hot: tuple[int, tuple[float, ...]] | None = None,
    ) -> None:
        super().__init__()
        if n_features <= 0 or hidden <= 0:
            raise ValueError("n_features and hidden must be positive")
        if value_prior is not None and not all(0 <= i < n_features for i in value_prior):
            raise ValueError("value_prior indexes must name features")
        self.n_features = n_features
        self.hidden = hidden
        self.value_prior = value_prior
        self.one_hot = one_hot
        extra = 0 if one_hot is None else len(one_hot[1])
        if value_prior is not None:
            self.prior_scale = nn.Parameter(torch.tensor(float(prior_scale)))
        self.layers = nn.Sequential(
            nn.Linear(n_features + extra, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, 1),
        )
        last = self.layers[-1]
        assert isinstance(last, nn.Linear)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    def forward(self, features: Tensor) -> Tensor:
        inputs = features
        if self.one_hot is not None:
            i, levels = self.one_hot
            at = torch.tensor(levels, dtype=features.dtype, device=features.device)
            hot = torch.isclose(features[..., i, None], at, atol=1e-6).to(features.dtype)
            inputs = torch.cat((features, hot), dim=-1)
        scores: Tensor = self.layers(inputs).squeeze(-1)
        if self.value_prior is not None:
            p, price = self.value_prior
            value = features[..., p].clamp(min=0.0) * torch.expm1(features[..., price]).clamp(
                min=0.0
            )
            scores = scores + self.prior_scale * torch.log(value + 1e-6)
        return scores


def shown_mask(scores: Tensor, mask: Tensor, max_shown: int | None) -> Tensor:
    """Which variants are shown: the ``max_shown`` best-scored valid ones per row.

    Ties go to the lower index (a stable sort), so serving and evaluation agree exactly.
    """
    if max_shown is None or max_shown >= scores.shape[-1]:
        return mask
    masked = scores.detach().masked_fill(~mask, float("-inf"))
    order = torch.sort(masked, dim=-1, descending=True, stable=True).indices[..., :max_shown]
    top = torch.zeros_like(mask).scatter(-1, order, True)
    return top & mask


def variant_probabilities(
    scores: Tensor,
    mask: Tensor,
    *,
    temperature: float,
    floor: float,
    max_shown: int | None,
) -> Tensor:
    """Probabilities ``[..., A]`` of showing each variant: ``floor + (1 - k * floor) *
    softmax(scores / temperature)`` over the ``k`` shown variants, 0 elsewhere.

    Every shown variant gets at least ``floor`` (``1 / k`` when ``k * floor > 1``: uniform),
    every row with a valid variant sums to 1, rows without one are all 0. Differentiable in
    ``scores`` given which variants are shown.
    """
    shown = shown_mask(scores, mask, max_shown)
    k = shown.sum(dim=-1, keepdim=True).to(scores.dtype)
    per_variant_floor = torch.minimum(torch.full_like(k, floor), 1.0 / k.clamp(min=1.0))
    logits = (scores / temperature).masked_fill(~shown, float("-inf"))
    soft = torch.softmax(logits, dim=-1).nan_to_num(0.0)  # all-masked rows: NaN -> 0
    probs = per_variant_floor + (1.0 - k * per_variant_floor) * soft
    return probs * shown
