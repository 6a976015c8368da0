"""f-DIME: MI estimation via f-divergence and data derangements (Letizia, Novello, Tonello, NeurIPS 2024).

A discriminator `D(x, y)` is trained to maximise a variational lower bound `J_f(D)` of an f-divergence between the
joint `p = p(x, y)` and the product of marginals `q = p(x) p(y)`, whose samples are the batch's y deranged
(`mie.derangement_scores`: no x is paired with its own y). At the optimum the discriminator gives the density ratio
`R(D*) = p / q`, and the MI estimate is `E_p[log R(D)]` (nats). The three members, as in the paper and the official
code (github.com/tonellolab/fDIME, `utils.py`: `kl_fdime_deranged`, `gan_fdime_deranged`, `hd_fdime_deranged`):

* `kl-dime`:  `J = E_p[log D] - E_q[D] + 1` (<= KL(p || q) = I), `D* = p/q`, readout `E_p[log D]`;
* `gan-dime`: `J = E_p[log(1-D)] + E_q[log D]` (<= 2 JS(p, q) - log 4), `D* = q/(p+q)`, readout
  `E_p[log((1-D)/D)]`;
* `hd-dime`:  `J = 2 - E_p[D] - E_q[1/D]` (<= H^2(p, q)), `D* = sqrt(q/p)`, readout `E_p[log(1/D^2)]`.

(H^2 is the squared Hellinger distance `int (sqrt p - sqrt q)^2`; the official code minimises `-J_f`: for KL
`-mean log D_joint + mean D_marginal`, for GAN binary cross-entropy with the joint labelled 0 and the deranged
samples 1, for HD `mean D_joint + mean 1/D_marginal`.)

Critic parametrisation. Here the critic's score `T(x, y)` is a real number and every member reads it as the log
density ratio: `D = e^T` (KL), `D = sigmoid(-T)` (GAN, so `(1-D)/D = e^T`), `D = e^{-T/2}` (HD). So for all three
the optimal critic is `T* = log p(x,y)/(p(x)p(y))` (a task's `log_density_ratio`), the readout is `E_p[T]`
(`fdime_readout`), and a critic trained by any of them can be read out or evaluated by any other estimator. The
official networks reach D through a softplus (KL, HD) or a sigmoid (GAN) output layer instead; the objectives and
readouts as functions of D are the same. In terms of T the objectives are

* KL:  `J = 1 + E_p[T] - E_q[e^T]` — NWJ's `E_p[T'] - E_q[e^{T'-1}]` with the f-GAN variational function
  `T' = T + 1` (so the readout is `E_p[T' - 1]`);
* GAN: `J = -E_p[softplus(-T)] - E_q[softplus(T)]` — the f-GAN Jensen-Shannon objective (`js_objective`);
* HD:  `J = 2 - E_p[e^{-T/2}] - E_q[e^{T/2}]`.

Each is a pure function of `Scores` (any K; the f-DIME estimators train with K = 1 derangement negatives, which
`estimate` builds for them by default). Exponential means are `meanexp` sums, so float32 scores of +-1e4 give
`J = -inf` (a loss of `+inf`) only when a mean truly exceeds float range, never NaN.
"""

from __future__ import annotations

from torch import Tensor
from torch.nn.functional import softplus

from ._math import computed_in_float32, meanexp
from .registry import Estimator, register
from .scores import Scores

__all__ = [
    "GANDIME",
    "HDDIME",
    "KLDIME",
    "fdime_readout",
    "gan_dime_objective",
    "hd_dime_objective",
    "kl_dime_objective",
]


@computed_in_float32
def fdime_readout(s: Scores) -> Tensor:
    """The f-DIME MI estimate `E_p[T]` (nats, 0-d): the mean log density ratio on the positive pairs `[N]`. It reads
    no negatives: they shape the critic through the objective only."""
    return s.positive.mean()


@computed_in_float32
def kl_dime_objective(s: Scores) -> Tensor:
    """KL-DIME's objective `1 + E_p[T] - E_q[e^T]` (nats, 0-d), `= E_p[log D] - E_q[D] + 1` with `D = e^T`: a lower
    bound on KL(p || q) = I(X; Y), maximised (with value I) by `T* = log p/q`. `-inf` when `mean e^T` overflows."""
    return 1.0 + s.positive.mean() - meanexp(s.negative)


@computed_in_float32
def gan_dime_objective(s: Scores) -> Tensor:
    """GAN-DIME's objective `E_p[log(1-D)] + E_q[log D]` with `D = sigmoid(-T)`, i.e.
    `-E_p[softplus(-T)] - E_q[softplus(T)]` (0-d): at most `2 JS(p, q) - log 4`, maximised by `T* = log p/q`."""
    return -softplus(-s.positive).mean() - softplus(s.negative).mean()


@computed_in_float32
def hd_dime_objective(s: Scores) -> Tensor:
    """HD-DIME's objective `2 - E_p[D] - E_q[1/D]` with `D = e^{-T/2}`, i.e. `2 - E_p[e^{-T/2}] - E_q[e^{T/2}]`
    (0-d): at most the squared Hellinger distance `int (sqrt p - sqrt q)^2 = 2 - 2 int sqrt(p q)`, with equality at
    `T* = log p/q`. `-inf` when a mean overflows."""
    return 2.0 - meanexp(-0.5 * s.positive) - meanexp(0.5 * s.negative)


class _FDIME(Estimator):
    """An f-DIME estimator: `loss(s) = -J_f(s)` (the f-divergence objective), `bound(s) = E_p[T]` (the MI readout,
    nats). Trains with derangement negatives by default (`negatives = "derangement"`)."""

    negatives = "derangement"

    @staticmethod
    def objective(s: Scores) -> Tensor:
        raise NotImplementedError

    def bound(self, s: Scores) -> Tensor:
        return fdime_readout(s)

    def loss(self, s: Scores) -> Tensor:
        return -self.objective(s)


@register("kl-dime")
class KLDIME(_FDIME):
    """KL-DIME: trains with `kl_dime_objective` (the KL variational bound, NWJ's up to `T' = T + 1`), reads out
    `E_p[T]`."""

    objective = staticmethod(kl_dime_objective)


@register("gan-dime")
class GANDIME(_FDIME):
    """GAN-DIME: trains with `gan_dime_objective` (the GAN/JS discriminator objective), reads out `E_p[T]`."""

    objective = staticmethod(gan_dime_objective)


@register("hd-dime")
class HDDIME(_FDIME):
    """HD-DIME: trains with `hd_dime_objective` (the squared-Hellinger variational bound), reads out `E_p[T]`."""

    objective = staticmethod(hd_dime_objective)
