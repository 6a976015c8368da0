"""Critics: `matrix` agrees with broadcasting, ConcatCritic is a concat MLP, any callable is a critic, shapes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import mi_estimators as mie
from mi_estimators import BilinearCritic, ConcatCritic, Scores, SeparableCritic
from mi_estimators.critics import all_pairs_scores, contrastive_scores, score_matrix

F64 = torch.float64
DX, DY = 3, 2


def data(n: int = 5, m: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, DX, generator=g, dtype=F64), torch.randn(m, DY, generator=g, dtype=F64)


def build(kind: str) -> nn.Module:
    torch.manual_seed(0)
    if kind == "separable":
        critic = SeparableCritic(DX, DY, hidden=(8, 8), embed_dim=4, activation="tanh")
    elif kind == "concat":
        critic = ConcatCritic(DX, DY, hidden=(8, 6), activation="elu")
    else:
        critic = BilinearCritic(DX, DY)
        with torch.no_grad():  # zero-initialised: give it values that can disagree
            critic.weight.normal_()
            critic.bias.fill_(0.3)
    return critic.double()


KINDS = ["separable", "concat", "bilinear"]


@pytest.mark.parametrize("kind", KINDS)
def test_matrix_equals_broadcasting_and_pairwise_calls(kind):
    critic = build(kind)
    x, y = data()
    m = critic.matrix(x, y)
    assert m.shape == (5, 4)
    torch.testing.assert_close(m, critic(x[:, None], y[None]))
    torch.testing.assert_close(score_matrix(critic, x, y), m)
    # entry by entry, one pair at a time
    loop = torch.stack([torch.stack([critic(x[i], y[j]) for j in range(4)]) for i in range(5)])
    torch.testing.assert_close(m, loop)
    # and the variation is real (a constant critic would pass the above trivially)
    assert float(m.detach().std()) > 1e-3


def test_concat_critic_equals_an_explicit_concat_mlp():
    critic = build("concat")
    lin1, act = critic.x_in, nn.ELU()
    reference = nn.Sequential(nn.Linear(DX + DY, 8), act, nn.Linear(8, 6), nn.ELU(), nn.Linear(6, 1)).double()
    with torch.no_grad():
        reference[0].weight.copy_(torch.cat([lin1.weight, critic.y_in.weight], dim=1))
        reference[0].bias.copy_(lin1.bias)
        linears = [mod for mod in critic.rest if isinstance(mod, nn.Linear)]
        assert len(linears) == 2
        for ref, mine in zip((reference[2], reference[4]), linears):
            ref.weight.copy_(mine.weight)
            ref.bias.copy_(mine.bias)
    x, y = data()
    want = reference(torch.cat([x[:, None].expand(5, 4, DX), y[None].expand(5, 4, DY)], dim=-1)).squeeze(-1)
    torch.testing.assert_close(critic.matrix(x, y), want)
    torch.testing.assert_close(critic(x[:4], y), reference(torch.cat([x[:4], y], -1)).squeeze(-1))


def test_separable_and_bilinear_closed_forms():
    x, y = data()
    sep = build("separable")
    torch.testing.assert_close(sep.matrix(x, y), sep.f(x) @ sep.g(y).T)
    bil = build("bilinear")
    want = torch.einsum("nd,de,me->nm", x, bil.weight, y) + 0.3
    torch.testing.assert_close(bil.matrix(x, y), want)
    torch.testing.assert_close(bil(x[:4], y), torch.einsum("nd,de,ne->n", x[:4], bil.weight, y) + 0.3)


def test_score_matrix_with_a_plain_function_and_a_task():
    def neg_sq_dist(a, b):
        return -((a[..., :2] - b) ** 2).sum(-1)

    x, y = data()
    m = score_matrix(neg_sq_dist, x, y)
    want = torch.tensor(
        [[-float(((x[i, :2] - y[j]) ** 2).sum()) for j in range(4)] for i in range(5)], dtype=F64
    )
    torch.testing.assert_close(m, want)
    task = mie.tasks.CorrelatedGaussian(dim=2, mi=1.0)
    xt, yt = task.sample(6, generator=torch.Generator().manual_seed(1), dtype=F64)
    s = all_pairs_scores(task.log_density_ratio, xt, yt)
    torch.testing.assert_close(s.positive, task.log_density_ratio(xt, yt))
    assert s.negative.shape == (6, 5)
    torch.testing.assert_close(s.negative[2, 2], task.log_density_ratio(xt[2], yt[3]))


def test_all_pairs_scores_carries_gradients_to_the_critic():
    critic = build("separable")
    x, y = data(6, 6)
    s = all_pairs_scores(critic, x, y)
    assert isinstance(s, Scores) and s.n == 6 and s.k == 5
    mie.make("infonce").loss(s).backward()
    grads = [p.grad for p in critic.parameters()]
    assert all(g is not None for g in grads) and sum(float(g.abs().sum()) for g in grads) > 0


@pytest.mark.parametrize("kind", KINDS)
def test_contrastive_scores_shapes_and_values(kind):
    critic = build(kind)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(5, DX, generator=g, dtype=F64)
    y = torch.randn(5, DY, generator=g, dtype=F64)
    y_neg = torch.randn(5, 7, DY, generator=g, dtype=F64)
    lp = torch.randn(5, generator=g, dtype=F64)
    s = contrastive_scores(critic, x, y, y_neg, log_proposal=lp, marginal_entropy=1.5)
    assert s.positive.shape == (5,) and s.negative.shape == (5, 7)
    assert s.log_proposal is lp and s.marginal_entropy == 1.5
    torch.testing.assert_close(s.positive, critic(x, y))
    for i in (0, 4):
        torch.testing.assert_close(s.negative[i], critic(x[i].expand(7, DX), y_neg[i]))


@pytest.mark.parametrize("kind", KINDS)
def test_bad_dims_raise_naming_the_shape(kind):
    critic = build(kind)
    x, y = data()
    with pytest.raises(ValueError, match=r"x with last dimension 3; got shape \(5, 4\)"):
        critic(torch.zeros(5, 4, dtype=F64), torch.zeros(5, DY, dtype=F64))
    with pytest.raises(ValueError, match=r"y with last dimension 2; got shape \(4, 3\)"):
        critic.matrix(x, torch.zeros(4, 3, dtype=F64))
    with pytest.raises(ValueError, match=r"score_matrix needs x \[N, dx\].*\(2, 5, 3\)"):
        score_matrix(critic, torch.zeros(2, 5, DX, dtype=F64), y)
    with pytest.raises(ValueError, match=r"same number of rows; got 5 and 4"):
        all_pairs_scores(critic, x, y)
    with pytest.raises(
        ValueError, match=r"y_negative must have shape \[N, K, dy\] with N=5; got shape \(5, 2\)"
    ):
        contrastive_scores(critic, x, torch.zeros(5, DY, dtype=F64), torch.zeros(5, DY, dtype=F64))
    with pytest.raises(ValueError, match=r"N=5; got shape \(4, 3, 2\)"):
        contrastive_scores(critic, x, torch.zeros(5, DY, dtype=F64), torch.zeros(4, 3, DY, dtype=F64))


def test_score_matrix_checks_what_a_callable_returns():
    x, y = data()
    with pytest.raises(ValueError, match=r"critic returned shape \(5,\) for all pairs; expected \(5, 4\)"):
        score_matrix(lambda a, b: a.sum(-1).squeeze(-1), x, y)


def test_bad_constructor_options():
    with pytest.raises(ValueError, match=r"activation must be one of .*got 'sigmoid'"):
        SeparableCritic(2, 2, activation="sigmoid")
    with pytest.raises(ValueError, match=r"at least one hidden layer"):
        ConcatCritic(2, 2, hidden=())


@pytest.mark.parametrize(
    "make, match",
    [
        (
            lambda: mie.ConcatCritic(3, 3, hidden=(0,)),
            r"layer sizes must be a sequence of positive integers; got \[3, 3, 0, 1\]",
        ),
        (lambda: mie.ConcatCritic(3, 3, hidden=(8, 2.5)), r"positive integers; got \[3, 3, 8, 2\.5, 1\]"),
        (lambda: mie.ConcatCritic(3, 3, activation="gelu"), r"activation must be one of .*; got 'gelu'"),
        (lambda: mie.SeparableCritic(3, 3, hidden=(-4,)), r"positive integers; got \[3, -4, 32\]"),
        (lambda: mie.SeparableCritic(3, 3, embed_dim=0), r"positive integers; got \[3, 256, 0\]"),
        (lambda: mie.SeparableCritic(3, 3, hidden=(True,)), r"positive integer"),
    ],
)
def test_critic_sizes_and_activation_are_checked(make, match):
    """A zero-width layer would silently make a critic of empty tensors; a bad activation named, not a KeyError."""
    with pytest.raises(ValueError, match=match):
        make()


def test_concat_critic_initialisation_is_unchanged_by_the_checks():
    """The checks draw nothing: a seeded ConcatCritic's first layer is that of the same layers built by hand."""
    torch.manual_seed(0)
    c = mie.ConcatCritic(3, 2, hidden=(4, 4))
    torch.manual_seed(0)
    x_in = torch.nn.Linear(3, 4)
    assert torch.equal(c.x_in.weight, x_in.weight)


def test_hybrid_critic_is_the_sum_of_a_concat_and_a_separable_critic():
    x, y = data(5, 4)
    torch.manual_seed(3)
    h = mie.HybridCritic(DX, DY, hidden=(8, 8), separable_hidden=(6,), embed_dim=4).double()
    torch.manual_seed(3)  # initialised in the documented order: the concat critic, then the separable one
    c = ConcatCritic(DX, DY, hidden=(8, 8)).double()
    sep = SeparableCritic(DX, DY, hidden=(6,), embed_dim=4).double()
    assert torch.equal(h.concat.x_in.weight, c.x_in.weight) and torch.equal(
        h.separable.f[0].weight, sep.f[0].weight
    )
    expected = c.matrix(x, y) + sep.matrix(x, y)
    torch.testing.assert_close(h.matrix(x, y), expected)
    torch.testing.assert_close(h(x.unsqueeze(1), y.unsqueeze(0)), expected)  # broadcasting agrees with matrix
    torch.testing.assert_close(score_matrix(h, x, y), expected)
    with pytest.raises(ValueError, match="critic expected x with last dimension 3"):
        h(torch.zeros(2, 4, dtype=F64), torch.zeros(2, DY, dtype=F64))


def test_averaged_critic_is_an_exponential_moving_average_of_the_parameters():
    torch.manual_seed(0)
    net = ConcatCritic(DX, DY, hidden=(4,)).double()
    avg = mie.AveragedCritic(net, decay=0.75)
    start = [p.detach().clone() for p in avg.parameters()]
    assert all(not p.requires_grad for p in avg.parameters())
    assert len(list(avg.parameters())) == len(
        list(net.parameters())
    )  # the average's own: the critic is not owned
    assert avg.trained is net and "trained" not in dict(avg.named_children())
    target = [p.detach().clone() + 1.0 for p in net.parameters()]
    with torch.no_grad():
        for p, t in zip(net.parameters(), target):
            p.copy_(t)
    for _ in range(3):
        avg.update()
    for a, s0, t in zip(avg.parameters(), start, target):  # avg_k = t + decay^k (avg_0 - t)
        torch.testing.assert_close(a, t + 0.75**3 * (s0 - t))
    x, y = data()
    torch.testing.assert_close(avg(x[:4], y), avg.average(x[:4], y))
    torch.testing.assert_close(avg.matrix(x, y), avg.average.matrix(x, y))


@pytest.mark.parametrize(
    "make, error, match",
    [
        (
            lambda: mie.AveragedCritic(ConcatCritic(2, 2), decay=1.0),
            ValueError,
            r"decay must be a number in \(0, 1\)",
        ),
        (
            lambda: mie.AveragedCritic(ConcatCritic(2, 2), decay=0),
            ValueError,
            r"decay must be a number in \(0, 1\)",
        ),
        (lambda: mie.AveragedCritic(ConcatCritic(2, 2), decay=True), ValueError, r"decay must be a number"),
        (lambda: mie.AveragedCritic(lambda x, y: x.sum(-1), 0.9), TypeError, "an nn.Module with parameters"),
    ],
)
def test_averaged_critic_rejects_bad_arguments(make, error, match):
    with pytest.raises(error, match=match):
        make()
