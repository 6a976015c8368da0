"""Variational MI bounds as pure functions of `Scores`, and the estimators that wrap them.

Every function here takes `Scores` (`positive [N]`, `negative [N, K]`) and returns a 0-d tensor in nats. The
negatives of `dv`, `nwj`, `tuba`, `smile` and `js` must be draws from the product of marginals p(x)p(y); those of
`infonce` and `interpolated` are the other members of the contrastive set (e.g. the off-diagonal of an all-pairs
matrix). Every reduction of exponentials is a log-sum-exp or a sum of entrywise `exp(t - log count)` (`meanexp`), so
float32 scores of +-1e4 give finite values and gradients wherever the true value is within float range, and the
NWJ-type means `E e^T` give `-inf` (never NaN) when they exceed it. float16/bfloat16 scores are computed in float32
and the result is rounded to their dtype (`computed_in_float32`). docs/estimators-numerics.md states the ranges.

References: Poole et al. 2019 (On variational bounds of MI), Belghazi et al. 2018 (MINE), Nguyen-Wainwright-Jordan
2010 (NWJ), van den Oord et al. 2018 (InfoNCE), Song & Ermon 2020 (SMILE), Barber & Agakov 2003.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn.functional import softplus

from ._math import HALF_DTYPES, computed_in_float32, exp_minus_one_mean, logmeanexp, meanexp
from .options import flag, number
from .proposals import ProposalEstimator
from .registry import Estimator, register
from .scores import Scores

# ---------------------------------------------------------------------------------------------------------------
# Pure bounds
# ---------------------------------------------------------------------------------------------------------------

#: the checks of the options that the pure bounds share with their estimators
_TAU = number(0.0, low_open=True, allow_inf=True, what="a positive number")
_ALPHA = number(0.0, 1.0, what="a number in [0, 1]")


@computed_in_float32
def dv_bound(s: Scores) -> Tensor:
    """Donsker-Varadhan: `E_p[T] - log E_{p(x)p(y)}[e^T]`, nats. Invariant to adding a constant to all scores.
    Always finite for finite scores (log-mean-exp)."""
    return s.positive.mean() - logmeanexp(s.negative)


@computed_in_float32
def nwj_bound(s: Scores) -> Tensor:
    """NWJ / f-divergence (MINE-f): `E_p[T] - E_{p(x)p(y)}[e^(T-1)]`, nats; `<= dv_bound` for the same scores.

    The exponential mean is a sum of `exp(T - 1 - log count)` (`meanexp`), so no summand overflows unless the mean
    does; when the mean itself exceeds float range (`log mean e^T > 89.7` in float32) the result is `-inf`, which
    is the honest value of the bound in that precision (the true bound is below -3.4e38), never NaN."""
    return s.positive.mean() - exp_minus_one_mean(s.negative)


@computed_in_float32
def infonce_bound(s: Scores) -> Tensor:
    """InfoNCE (CPC): `E_i[T_ii - log mean_{j in {i} + negatives_i} e^{T_ij}]`, nats; never above `log(K+1)`."""
    all_scores = s.all_scores()
    return (s.positive - logmeanexp(all_scores, dim=1)).mean()


@computed_in_float32
def tuba_bound(s: Scores, log_baseline: Tensor | float = 0.0) -> Tensor:
    """TUBA: `1 + E_p[T - a] - E_{p(x)p(y)}[e^{T - a}]` with log-baseline `a` (a number, or `[N]` per x), nats.
    `a = 1` gives NWJ; the optimal constant `a = log E e^T` gives DV."""
    b = torch.as_tensor(log_baseline, dtype=s.positive.dtype, device=s.positive.device)
    if b.dim() > 1 or (b.dim() == 1 and b.shape[0] != s.n):
        raise ValueError(
            f"log_baseline must be a number or have shape [N] = [{s.n}]; got shape {tuple(b.shape)}"
        )
    neg = s.negative - (b.unsqueeze(-1) if b.dim() == 1 else b)
    return 1.0 + (s.positive - b).mean() - meanexp(neg)


@computed_in_float32
def js_objective(s: Scores) -> Tensor:
    """The f-GAN Jensen-Shannon objective `E_p[-softplus(-T)] - E_q[softplus(T)]` (not an MI bound: a training
    objective whose optimal critic is the log density ratio)."""
    return (-softplus(-s.positive)).mean() - softplus(s.negative).mean()


@computed_in_float32
def smile_bound(s: Scores, tau: float = 5.0) -> Tensor:
    """SMILE: DV with the partition term's scores clipped to `[-tau, tau]`, nats; `tau=inf` is exactly DV."""
    _TAU.check("smile", "tau", tau)
    tau = float(tau)
    neg = s.negative if math.isinf(tau) else s.negative.clamp(-tau, tau)
    return s.positive.mean() - logmeanexp(neg)


def _leave_one_out_logsumexp(all_scores: Tensor) -> Tensor:
    """`[N, 1+K]` -> `[N, K]`: for each negative k (columns 1..K), log-sum-exp of the row without column k.

    Relative to the row's maximum `m` (detached: the result does not depend on it): with `e_j = exp(s_j - m)` and
    `S = sum_j e_j`, the row without a column k that is not the maximum has log-sum-exp `m + log(S - e_k)`, and
    `S - e_k >= 1` (the maximum's own term remains), so there is no cancellation at any magnitude of the scores;
    the maximum's own column is the log-sum-exp of the row with it masked out. No cumulative scans, no [N, K, K]."""
    m = all_scores.detach().amax(dim=1, keepdim=True)
    e = torch.exp(all_scores - m)
    top = all_scores.argmax(dim=1, keepdim=True)
    is_top = torch.zeros_like(all_scores, dtype=torch.bool).scatter_(1, top, True)
    without_top = torch.logsumexp(all_scores.masked_fill(is_top, -math.inf), dim=1, keepdim=True)
    # S - e_k >= 1 on the other columns, S itself on the maximum's (whose value comes from without_top)
    rest = e.sum(dim=1, keepdim=True) - e.masked_fill(is_top, 0.0)
    loo = torch.where(is_top, without_top, m + torch.log(rest))
    return loo[:, 1:]


@computed_in_float32
def interpolated_bound(s: Scores, alpha: float = 0.5, log_baseline: Tensor | float = 0.0) -> Tensor:
    """Poole et al.'s alpha-interpolated bound between InfoNCE (`alpha=1`) and TUBA/NWJ (`alpha=0`), nats.

    `I_alpha = 1 + E_p[T - log(alpha m + (1-alpha) e^a)] - E_{p(x)p(y)}[e^T / (alpha m + (1-alpha) e^a)]`, where `m`
    is the mean of `e^T` over K contrastive samples of the same x: for the joint term the positive plus K-1 negatives
    (averaged over which negative is left out), for the marginal term the K negatives. With `alpha=1` the bound is
    at most `log K`; with `alpha=0` and `a=1` it is NWJ.
    """
    _ALPHA.check("interpolated", "alpha", alpha)
    alpha = float(alpha)
    if s.k < 2 and alpha > 0:
        raise ValueError(f"interpolated bound with alpha > 0 needs K >= 2 negatives; got K={s.k}")
    dtype, device = s.positive.dtype, s.positive.device
    a = torch.as_tensor(log_baseline, dtype=dtype, device=device)
    if a.dim() > 1 or (a.dim() == 1 and a.shape[0] != s.n):
        raise ValueError(
            f"log_baseline must be a number or have shape [N] = [{s.n}]; got shape {tuple(a.shape)}"
        )
    a_col = a.unsqueeze(-1) if a.dim() == 1 else a
    log_k = math.log(s.k)

    def mix(log_m: Tensor) -> Tensor:  # log(alpha e^log_m + (1-alpha) e^a), computed in log space
        if alpha == 1.0:
            return log_m
        if alpha == 0.0:
            return torch.zeros_like(log_m) + a_col
        return torch.logaddexp(log_m + math.log(alpha), a_col + math.log1p(-alpha))

    joint_m = _leave_one_out_logsumexp(s.all_scores()) - log_k if alpha > 0 else s.negative
    joint = (s.positive.unsqueeze(1) - mix(joint_m)).mean()
    marg_m = torch.logsumexp(s.negative, dim=1, keepdim=True) - log_k if alpha > 0 else s.negative
    marginal = meanexp(s.negative - mix(marg_m))
    return 1.0 + joint - marginal


@computed_in_float32
def ba_bound(s: Scores) -> Tensor:
    """Barber-Agakov: `E_p[log q(y|x)] + H(Y)`, nats. Reads `log_proposal` and `marginal_entropy` only."""
    return s.log_proposal_or_raise("ba").mean() + s.entropy_or_raise("ba")


@computed_in_float32
def club_bound(s: Scores) -> Tensor:
    """CLUB (an UPPER bound when the critic is the log-density `log q(y|x)` of a good variational conditional):
    `E_p[log q(y|x)] - E_{p(x)p(y)}[log q(y|x)]`, nats."""
    return s.positive.mean() - s.negative.mean()


@computed_in_float32
def _js_report(s: Scores) -> Tensor:
    """JS's reported bound: NWJ of the shifted critic `T + 1`, `E_p[T] + 1 - E_{p(x)p(y)}[e^T]`, nats."""
    return s.positive.mean() + 1.0 - meanexp(s.negative)


# ---------------------------------------------------------------------------------------------------------------
# Estimators (registered by name)
# ---------------------------------------------------------------------------------------------------------------


@register("dv")
class DV(Estimator):
    """Donsker-Varadhan (MINE without the moving average): trains and reports `dv_bound`."""

    def bound(self, s: Scores) -> Tensor:
        return dv_bound(s)


@register("mine")
class MINE(Estimator):
    """MINE (Belghazi et al. 2018): reports `dv_bound`; trains with the bias-corrected gradient in which the
    partition term's gradient `grad E e^T / E e^T` uses a moving average of `E e^T` in the denominator.

    The moving average lives in log space (`ema_log_z`, a buffer, so `state_dict` round-trips it); the ratio
    `E e^T / ema` is therefore at most `1 / ema_rate` after each update and never overflows.

    Args:
        ema_rate: weight of the newest batch in the moving average (MINE's `1 - alpha`), in (0, 1].
    """

    ema_log_z: Tensor
    options = {"ema_rate": number(0.0, 1.0, low_open=True, what="a number in (0, 1]")}

    def __init__(self, ema_rate: float = 0.01) -> None:
        super().__init__()
        self.ema_rate = float(ema_rate)
        self.register_buffer("ema_log_z", torch.tensor(math.nan))

    def bound(self, s: Scores) -> Tensor:
        return dv_bound(s)

    def loss(self, s: Scores) -> Tensor:
        dtype = s.positive.dtype
        if dtype in HALF_DTYPES:  # computed in float32, rounded once (as `computed_in_float32`)
            return self.loss(s.astype(torch.float32)).to(dtype)
        log_z = logmeanexp(s.negative)
        with torch.no_grad():
            batch = log_z.detach().to(self.ema_log_z.dtype)
            if self.ema_rate < 1.0:
                moved = torch.logaddexp(
                    self.ema_log_z + math.log1p(-self.ema_rate), batch + math.log(self.ema_rate)
                )
                # the first batch starts the average (NaN: none yet); a select, not a Python branch on a tensor,
                # so that `torch.func.vmap` batches it (many seeds in one pass)
                self.ema_log_z.copy_(torch.where(torch.isnan(self.ema_log_z), batch, moved))
            else:
                self.ema_log_z.copy_(batch)
            ratio = torch.exp(log_z.detach() - self.ema_log_z.to(log_z.dtype))
        # d/dθ [ratio * log_z] = (E e^T / ema) * grad log E e^T = grad E e^T / ema: MINE's corrected gradient.
        return -(s.positive.mean() - ratio * log_z)


@register("nwj")
class NWJ(Estimator):
    """NWJ (MINE-f, f-GAN KL): trains and reports `nwj_bound`."""

    def bound(self, s: Scores) -> Tensor:
        return nwj_bound(s)


@register("infonce")
class InfoNCE(Estimator):
    """InfoNCE / CPC: trains and reports `infonce_bound` (low variance, capped at `log(K+1)`)."""

    def bound(self, s: Scores) -> Tensor:
        return infonce_bound(s)


@register("js")
class JS(Estimator):
    """Trains the critic with the Jensen-Shannon f-GAN objective and reports NWJ on the shifted critic `T + 1`
    (the JS-optimal critic is the log density ratio, the NWJ-optimal one is `1 + ` that)."""

    def bound(self, s: Scores) -> Tensor:
        return _js_report(s)

    def loss(self, s: Scores) -> Tensor:
        return -js_objective(s)


@register("tuba")
class TUBA(Estimator):
    """TUBA with a constant log-baseline `a`: fixed (`log_baseline`), or learned jointly with the critic
    (`learned_baseline=True`, a scalar parameter initialised at `log_baseline`; its optimum makes TUBA equal DV)."""

    options = {"log_baseline": number(what="a finite number"), "learned_baseline": flag()}

    def __init__(self, log_baseline: float = 0.0, learned_baseline: bool = False) -> None:
        super().__init__()
        if learned_baseline:
            self.log_baseline = nn.Parameter(torch.tensor(float(log_baseline)))
        else:
            self.register_buffer("log_baseline", torch.tensor(float(log_baseline)))

    def bound(self, s: Scores) -> Tensor:
        return tuba_bound(s, self.log_baseline.to(s.positive.dtype))


@register("smile")
class SMILE(Estimator):
    """SMILE (Song & Ermon 2020): reports DV with the partition's scores clipped to `[-tau, tau]`; trains the critic
    with the JS objective, as in the paper. `tau=float('inf')` reports exactly DV."""

    options = {"tau": _TAU}

    def __init__(self, tau: float = 5.0) -> None:
        super().__init__()
        self.tau = float(tau)

    def bound(self, s: Scores) -> Tensor:
        return smile_bound(s, self.tau)

    def loss(self, s: Scores) -> Tensor:
        return -js_objective(s)


@register("interpolated")
class Interpolated(Estimator):
    """Poole et al.'s alpha-interpolated InfoNCE/NWJ bound with a learned (or fixed) constant log-baseline."""

    options = {
        "alpha": _ALPHA,
        "log_baseline": number(what="a finite number"),
        "learned_baseline": flag(),
    }

    def __init__(self, alpha: float = 0.5, log_baseline: float = 0.0, learned_baseline: bool = True) -> None:
        super().__init__()
        self.alpha = float(alpha)
        if learned_baseline:
            self.log_baseline = nn.Parameter(torch.tensor(float(log_baseline)))
        else:
            self.register_buffer("log_baseline", torch.tensor(float(log_baseline)))

    def bound(self, s: Scores) -> Tensor:
        return interpolated_bound(s, self.alpha, self.log_baseline.to(s.positive.dtype))


@register("ba")
class BarberAgakov(ProposalEstimator):
    """Barber-Agakov: `E_p[log q(y|x)] + H(Y)`, trained by maximum likelihood of its own learned proposal q(y|x)
    (options as `ProposalEstimator`: `proposal`, `x_dim`, `y_dim`, `hidden`, `squashed`, `marginal_entropy`). It is
    the `T = 0` member of the MISA family, so its scores carry zero critic scores."""

    needs_critic = False

    def bound(self, s: Scores) -> Tensor:
        return ba_bound(s)

    def scores(
        self,
        x: Tensor,
        y: Tensor,
        critic: object = None,
        generator: torch.Generator | None = None,
        marginal_entropy: float | Tensor | None = None,
    ) -> Scores:
        """`log_proposal = log q(y_i|x_i)` `[N]` and H(Y); the critic is not used (T = 0)."""
        log_q = self._law(x, y).log_prob(y)
        zeros = torch.zeros_like(log_q.detach())
        return Scores(
            zeros, zeros.unsqueeze(1), log_proposal=log_q, marginal_entropy=self._entropy(marginal_entropy)
        )


@register("club")
class CLUB(Estimator):
    """CLUB (Cheng et al. 2020), an upper bound: the critic must be a variational log-density `log q(y|x)`. Its
    loss trains q by maximum likelihood on the positives (CLUB's recipe) rather than moving the bound."""

    lower_bound = False

    def bound(self, s: Scores) -> Tensor:
        return club_bound(s)

    def loss(self, s: Scores) -> Tensor:
        return -s.positive.mean()
