"""mi_estimators: variational mutual-information bounds as pure functions of critic scores.

import mi_estimators as mie
mie.available()                       # registered estimator names
est = mie.make("nwj")                 # by name
s = mie.Scores.from_matrix(S)         # [N, N] critic scores -> positive / negative
est.bound(s), est.loss(s)             # estimate (nats) and training loss
hist = mie.estimate("infonce", mie.tasks.CorrelatedGaussian(dim=5, mi=2.0), steps=2000)
hist.heldout(n=4096).mean             # the trained critic on fresh samples (mie.evaluate)
mie.estimate("gan-dime", task)        # f-DIME: derangement negatives (mie.derangement_scores)
hist = mie.estimate(x=x, y=y, **mie.RECOMMENDED)   # your own samples (tensors, numpy, pandas; [M, d] or [M])
hist.result.mean, hist.result.stderr  # answered on a held-out test part by the critic validation selected
"""

from . import bounds, critics, fdime, misa, options, partition, proposals, samplers, tasks
from ._math import logmeanexp
from .bounds import (
    ba_bound,
    club_bound,
    dv_bound,
    infonce_bound,
    interpolated_bound,
    js_objective,
    nwj_bound,
    smile_bound,
    tuba_bound,
)
from .critics import (
    AveragedCritic,
    BilinearCritic,
    ConcatCritic,
    HybridCritic,
    SeparableCritic,
    all_pairs_scores,
    contrastive_scores,
    derangement,
    derangement_scores,
    score_matrix,
)
from .estimate import NEGATIVES, RECOMMENDED, Evaluation, History, estimate, evaluate
from .fdime import (
    GANDIME,
    HDDIME,
    KLDIME,
    fdime_readout,
    gan_dime_objective,
    hd_dime_objective,
    kl_dime_objective,
)
from .misa import MISA, MISADV, MISAF, MISABiased, misa_bound, misa_dv_bound, misa_f_bound
from .nonparametric import ksg
from .partition import LogZEstimate, MCMCLogZ, MonteCarloLogZ, PartitionError
from .proposals import DiagGaussian, GaussianProposal, TanhDiagGaussian, TanhGaussianProposal
from .registry import Estimator, available, make, register, unregister
from .samplers import (
    HMC,
    MALA,
    ULA,
    NonFiniteChainError,
    PyroHMC,
    PyroNUTS,
    SampleResult,
    make_sampler,
    sample_tilted,
)
from .scores import NonFiniteScoresError, Scores

__version__ = "0.1.0"

__all__ = [
    "AveragedCritic",
    "BilinearCritic",
    "ConcatCritic",
    "DiagGaussian",
    "Estimator",
    "Evaluation",
    "GANDIME",
    "GaussianProposal",
    "HDDIME",
    "HMC",
    "History",
    "HybridCritic",
    "KLDIME",
    "LogZEstimate",
    "MALA",
    "MCMCLogZ",
    "MISA",
    "MISABiased",
    "MISADV",
    "MISAF",
    "MonteCarloLogZ",
    "NEGATIVES",
    "RECOMMENDED",
    "NonFiniteChainError",
    "NonFiniteScoresError",
    "PartitionError",
    "PyroHMC",
    "PyroNUTS",
    "SampleResult",
    "Scores",
    "SeparableCritic",
    "TanhDiagGaussian",
    "TanhGaussianProposal",
    "ULA",
    "all_pairs_scores",
    "available",
    "ba_bound",
    "bounds",
    "club_bound",
    "contrastive_scores",
    "critics",
    "derangement",
    "derangement_scores",
    "dv_bound",
    "estimate",
    "evaluate",
    "fdime",
    "fdime_readout",
    "gan_dime_objective",
    "hd_dime_objective",
    "infonce_bound",
    "interpolated_bound",
    "js_objective",
    "kl_dime_objective",
    "ksg",
    "logmeanexp",
    "make",
    "make_sampler",
    "misa",
    "misa_bound",
    "misa_dv_bound",
    "misa_f_bound",
    "nwj_bound",
    "options",
    "partition",
    "proposals",
    "register",
    "sample_tilted",
    "samplers",
    "score_matrix",
    "smile_bound",
    "tasks",
    "tuba_bound",
    "unregister",
]


def __getattr__(name: str) -> object:
    # `mie.testing` on first use: it imports hypothesis, an optional extra that plain users need not have
    if name == "testing":
        import importlib

        return importlib.import_module(".testing", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
