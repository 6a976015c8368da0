import pytest
import torch

import mi_estimators as mie


def test_ba_with_the_exact_conditional_is_the_true_mi() -> None:
    # With q(y|x) the true conditional, E log q(y|x) + H(Y) = I(X;Y) exactly; 20k samples: sd ~ 0.02 nats.
    task = mie.tasks.CorrelatedGaussian(dim=3, mi=1.5)
    x, y = task.sample(20000, generator=torch.Generator().manual_seed(0))
    log_q = task.conditional_log_prob(x, y)
    s = mie.Scores(
        torch.zeros(20000), torch.zeros(20000, 1), log_proposal=log_q, marginal_entropy=task.entropy_y
    )
    assert float(mie.make("ba").bound(s)) == pytest.approx(1.5, abs=0.06)


def test_ba_learns_its_gaussian_proposal() -> None:
    # A linear-Gaussian proposal holds the exact conditional of a jointly Gaussian task, so maximum likelihood
    # drives BA to the truth; 600 Adam steps at lr 1e-2 get within 0.15 nats.
    task = mie.tasks.CorrelatedGaussian(dim=5, mi=2.0)
    hist = mie.estimate("ba", task, steps=600, batch_size=128, lr=1e-2, seed=0)
    assert abs(hist.final(100) - 2.0) < 0.15
    assert hist.estimates[0] < 0.5  # it really learned: an untrained N(0, 1) proposal scores no information


def test_ba_without_proposal_names_the_fix() -> None:
    with pytest.raises(ValueError, match="ensure_proposal"):
        mie.make("ba").scores(torch.zeros(4, 2), torch.zeros(4, 2))


def test_ba_proposal_from_dims_and_bad_batch() -> None:
    est = mie.make("ba", x_dim=2, y_dim=3, marginal_entropy=1.0)
    s = est.scores(torch.zeros(4, 2), torch.zeros(4, 3))
    assert s.log_proposal.shape == (4,) and s.marginal_entropy == 1.0
    with pytest.raises(ValueError, match=r"same N"):
        est.scores(torch.zeros(4, 2), torch.zeros(5, 3))
