"""Critics: modules producing scores `T(x, y)` that broadcast over leading axes.

A critic is any callable `critic(x [..., dx], y [..., dy]) -> [...]` whose leading axes broadcast, so
`critic(x[:, None], y[None, :])` is the `[N, N]` all-pairs matrix and `critic(x[:, None], y_samples)` with
`y_samples [N, K, dy]` scores K contrastive samples per x. A task's `log_density_ratio` is such a callable (the
optimal critic). `score_matrix`, `all_pairs_scores`, `derangement_scores` and `contrastive_scores` build `Scores`
from any of them.

Negatives from a batch of joint samples `(x_i, y_i)`, i < N, come two ways:

* all pairs (`all_pairs_scores`): every other `y_j` of the batch for each `x_i`, `negative [N, N-1]`, O(N^2) critic
  evaluations (one matmul for a separable critic);
* a derangement (`derangement_scores`, f-DIME's negatives): `y_{sigma(i)}` for a uniformly random permutation sigma
  of the batch without a fixed point, `negative [N, 1]`, O(N). A permutation with fixed points would pair some
  `x_i` with its own `y_i`, a joint sample posing as a marginal one (f-DIME, Letizia et al. 2024, Sec. 4).
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import Tensor, nn

from .options import require_generator, require_number, require_sizes
from .scores import Scores

Critic = Callable[[Tensor, Tensor], Tensor]

_ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "elu": nn.ELU, "tanh": nn.Tanh, "silu": nn.SiLU}


def _check_layers(sizes: list[int], activation: str) -> None:
    if activation not in _ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}; got {activation!r}")
    require_sizes("layer sizes", sizes)


def mlp(sizes: list[int], activation: str = "relu") -> nn.Sequential:
    """A plain MLP `sizes[0] -> ... -> sizes[-1]` with `activation` between layers (none after the last)."""
    _check_layers(sizes, activation)
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(_ACTIVATIONS[activation]())
    return nn.Sequential(*layers)


def _check_dims(x: Tensor, y: Tensor, x_dim: int, y_dim: int) -> None:
    if x.shape[-1] != x_dim:
        raise ValueError(f"critic expected x with last dimension {x_dim}; got shape {tuple(x.shape)}")
    if y.shape[-1] != y_dim:
        raise ValueError(f"critic expected y with last dimension {y_dim}; got shape {tuple(y.shape)}")


class SeparableCritic(nn.Module):
    """`T(x, y) = f(x) . g(y)` with MLP embeddings f, g of width `embed_dim`; the all-pairs `[N, N]` matrix is one
    matmul of the embeddings (`matrix`)."""

    def __init__(
        self,
        x_dim: int,
        y_dim: int,
        hidden: tuple[int, ...] = (256,),
        embed_dim: int = 32,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        self.x_dim, self.y_dim = x_dim, y_dim
        self.f = mlp([x_dim, *hidden, embed_dim], activation)
        self.g = mlp([y_dim, *hidden, embed_dim], activation)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        """`x [..., dx]`, `y [..., dy]` (broadcastable leading axes) -> scores `[...]`."""
        _check_dims(x, y, self.x_dim, self.y_dim)
        return (self.f(x) * self.g(y)).sum(-1)

    def matrix(self, x: Tensor, y: Tensor) -> Tensor:
        """All pairs: `x [N, dx]`, `y [M, dy]` -> `[N, M]`, `S[i, j] = T(x_i, y_j)`."""
        _check_dims(x, y, self.x_dim, self.y_dim)
        return self.f(x) @ self.g(y).T


class ConcatCritic(nn.Module):
    """Joint critic `T(x, y) = MLP([x, y])`. The first layer is split as `W_x x + W_y y`, so pairs broadcast without
    materialising the concatenation: the all-pairs matrix costs one `[N, M, hidden]` activation, not a Python loop."""

    def __init__(
        self, x_dim: int, y_dim: int, hidden: tuple[int, ...] = (256, 256), activation: str = "relu"
    ) -> None:
        super().__init__()
        if not hidden:
            raise ValueError(
                "ConcatCritic needs at least one hidden layer; use BilinearCritic for a linear critic"
            )
        _check_layers(
            [x_dim, y_dim, *hidden, 1], activation
        )  # before any layer: the init's draws keep their order
        self.x_dim, self.y_dim = x_dim, y_dim
        self.x_in = nn.Linear(x_dim, hidden[0])
        self.y_in = nn.Linear(y_dim, hidden[0], bias=False)
        self.act = _ACTIVATIONS[activation]()
        self.rest = mlp([*hidden, 1], activation)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        """`x [..., dx]`, `y [..., dy]` (broadcastable leading axes) -> scores `[...]`."""
        _check_dims(x, y, self.x_dim, self.y_dim)
        return self.rest(self.act(self.x_in(x) + self.y_in(y))).squeeze(-1)

    def matrix(self, x: Tensor, y: Tensor) -> Tensor:
        """All pairs: `x [N, dx]`, `y [M, dy]` -> `[N, M]`."""
        _check_dims(x, y, self.x_dim, self.y_dim)
        return self(x.unsqueeze(1), y.unsqueeze(0))


class HybridCritic(nn.Module):
    """`T(x, y) = MLP([x, y]) + f(x) . g(y)`: a `ConcatCritic` and a `SeparableCritic`, summed.

    The separable term holds the bilinear part of a log density ratio (for jointly Gaussian data, `x . y` summed
    over every dimension), which a concat MLP of ReLUs approximates poorly in high dimension; the concat term holds
    what an inner product of embeddings struggles with (sharp, local dependence at high MI in low dimension). On the
    MI staircase it beats both alone (docs/benchmarks.md, "Against f-DIME"). The all-pairs matrix is the sum of the
    two matrices. Initialised in that order: the concat critic's parameters, then the separable one's.

    Args:
        hidden: the concat MLP's hidden sizes.
        separable_hidden: the separable critic's hidden sizes.
        embed_dim: the separable critic's embedding width.
    """

    def __init__(
        self,
        x_dim: int,
        y_dim: int,
        hidden: tuple[int, ...] = (128, 128),
        separable_hidden: tuple[int, ...] = (256,),
        embed_dim: int = 32,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        self.x_dim, self.y_dim = x_dim, y_dim
        self.concat = ConcatCritic(x_dim, y_dim, hidden, activation)
        self.separable = SeparableCritic(x_dim, y_dim, separable_hidden, embed_dim, activation)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        """`x [..., dx]`, `y [..., dy]` (broadcastable leading axes) -> scores `[...]`."""
        return self.concat(x, y) + self.separable(x, y)

    def matrix(self, x: Tensor, y: Tensor) -> Tensor:
        """All pairs: `x [N, dx]`, `y [M, dy]` -> `[N, M]`."""
        return self.concat.matrix(x, y) + self.separable.matrix(x, y)


class AveragedCritic(nn.Module):
    """An exponential moving average of a trained critic's parameters (Polyak averaging), to read estimates through.

    `update()`, called after each optimiser step of the trained critic, moves every parameter of the average toward
    the trained one by `1 - decay` (`p_avg += (1 - decay) (p - p_avg)`) and copies its buffers. An estimate read
    through the average keeps the batch's sampling noise but loses most of the step-to-step noise that SGD leaves in
    the critic; it lags the trained critic by about `1 / (1 - decay)` steps (100 at 0.99). The average starts as a
    copy of the critic and has no gradients; `trained` is the critic it follows (not a submodule: `parameters()` and
    `state_dict()` hold the average's own).

    Args:
        critic: the trained critic, an `nn.Module` with parameters.
        decay: in (0, 1); 0.99 by default.
    """

    def __init__(self, critic: nn.Module, decay: float = 0.99) -> None:
        super().__init__()
        if not isinstance(critic, nn.Module) or not any(True for _ in critic.parameters()):
            raise TypeError(f"critic must be an nn.Module with parameters; got {type(critic).__name__}")
        self.decay = require_number("decay", decay, 0.0, 1.0, low_open=True, high_open=True)
        object.__setattr__(self, "trained", critic)  # followed, not owned
        self.average = copy.deepcopy(critic).requires_grad_(False)

    @torch.no_grad()
    def update(self) -> None:
        """One averaging step toward the trained critic's current parameters and buffers."""
        for avg, p in zip(self.average.parameters(), self.trained.parameters()):
            avg.lerp_(p.detach(), 1.0 - self.decay)
        for avg, b in zip(self.average.buffers(), self.trained.buffers()):
            avg.copy_(b)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        """The average's scores: as the trained critic's call."""
        return self.average(x, y)

    def matrix(self, x: Tensor, y: Tensor) -> Tensor:
        """All pairs `[N, M]` through the average (its `matrix`, else broadcasting)."""
        return score_matrix(self.average, x, y)


class BilinearCritic(nn.Module):
    """`T(x, y) = x^T W y + b`; the all-pairs matrix is `x W y^T`. Optimal for jointly Gaussian data up to the
    quadratic self-terms, and the natural critic for a linear-Gaussian check."""

    def __init__(self, x_dim: int, y_dim: int) -> None:
        super().__init__()
        self.x_dim, self.y_dim = x_dim, y_dim
        self.weight = nn.Parameter(torch.zeros(x_dim, y_dim))
        self.bias = nn.Parameter(torch.zeros(()))

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        _check_dims(x, y, self.x_dim, self.y_dim)
        return ((x @ self.weight) * y).sum(-1) + self.bias

    def matrix(self, x: Tensor, y: Tensor) -> Tensor:
        _check_dims(x, y, self.x_dim, self.y_dim)
        return x @ self.weight @ y.T + self.bias


def score_matrix(critic: Critic, x: Tensor, y: Tensor) -> Tensor:
    """All-pairs scores `[N, M]` from any critic: its `matrix` method when it has one, else broadcasting."""
    if x.dim() != 2 or y.dim() != 2:
        raise ValueError(
            f"score_matrix needs x [N, dx] and y [M, dy]; got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    matrix = getattr(critic, "matrix", None)
    out = matrix(x, y) if callable(matrix) else critic(x.unsqueeze(1), y.unsqueeze(0))
    if out.shape != (x.shape[0], y.shape[0]):
        raise ValueError(
            f"critic returned shape {tuple(out.shape)} for all pairs; expected {(x.shape[0], y.shape[0])}"
        )
    return out


def all_pairs_scores(critic: Critic, x: Tensor, y: Tensor) -> Scores:
    """`Scores` from the all-pairs matrix of a batch of joint samples `x [N, dx]`, `y [N, dy]`: positive the
    diagonal, negatives the `N - 1` other y of the batch for each x."""
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y must have the same number of rows; got {x.shape[0]} and {y.shape[0]}")
    return Scores.from_matrix(score_matrix(critic, x, y))


def _check_n(n: object) -> int:
    if not isinstance(n, int) or isinstance(n, bool) or n < 2:
        raise ValueError(f"a derangement needs n >= 2 elements (an int; n=1 has none); got {n!r}")
    return n


def derangement(n: int, generator: torch.Generator | None = None) -> Tensor:
    """A uniformly random derangement of `range(n)`: a permutation `sigma` with `sigma[i] != i` for every i.

    Exact uniform law over the `!n` derangements by rejection: draw uniform permutations (`torch.randperm`) until one
    has no fixed point. Each draw is a derangement with probability `!n / n! -> 1/e` (1/2 for n = 2, 3/8 for n = 4,
    >= 1/3 for every n >= 2), so the expected number of draws is about e = 2.72 and the expected cost O(n); the
    accepted draw is uniform over the derangements because every permutation is equally likely. (Sattolo's algorithm
    would be O(n) without rejection but gives only cyclic permutations, not all derangements.)

    Args:
        n: number of elements (an int >= 2).
        generator: the `torch.Generator` every draw comes from (its device is the result's); the global RNG when
            None.

    Returns:
        `LongTensor [n]`, `sigma[i]` the index paired with i.
    """
    n = _check_n(n)
    device = require_generator(generator)
    idx = torch.arange(n, device=device)
    while True:
        sigma = torch.randperm(n, generator=generator, device=device)
        if not bool((sigma == idx).any()):
            return sigma


def derangement_scores(
    critic: Critic, x: Tensor, y: Tensor, generator: torch.Generator | None = None
) -> Scores:
    """`Scores` of a joint batch with derangement negatives (f-DIME): `positive [N] = T(x_i, y_i)`,
    `negative [N, 1] = T(x_i, y_{sigma(i)})` for one uniformly random derangement `sigma` (`derangement`), so each
    x meets one y of another sample; 2N critic evaluations.

    Args:
        critic: `critic(x [N, dx], y [N, dy]) -> [N]`, nats.
        x: `[N, dx]`, y: `[N, dy]` joint samples, N >= 2.
        generator: draws the derangement (the global RNG when None).
    """
    if x.dim() != 2 or y.dim() != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(
            f"derangement_scores needs x [N, dx] and y [N, dy] with the same N; got {tuple(x.shape)} and "
            f"{tuple(y.shape)}"
        )
    sigma = derangement(x.shape[0], generator).to(y.device)
    positive = critic(x, y)
    negative = critic(x, y.index_select(0, sigma))
    if (
        not isinstance(positive, Tensor)
        or positive.shape != (x.shape[0],)
        or negative.shape != positive.shape
    ):
        got = tuple(positive.shape) if isinstance(positive, Tensor) else type(positive).__name__
        raise ValueError(f"critic returned shape {got} for N={x.shape[0]} pairs; expected ({x.shape[0]},)")
    return Scores(positive, negative.unsqueeze(1))


def contrastive_scores(critic: Critic, x: Tensor, y: Tensor, y_negative: Tensor, **fields: object) -> Scores:
    """`Scores` from explicit negatives: `x [N, dx]`, `y [N, dy]`, `y_negative [N, K, dy]` (one batched critic call
    for the K negatives). Extra keyword fields (`log_proposal`, `marginal_entropy`, `tilted`) pass to `Scores`."""
    if y_negative.dim() != 3 or y_negative.shape[0] != x.shape[0]:
        raise ValueError(
            f"y_negative must have shape [N, K, dy] with N={x.shape[0]}; got shape {tuple(y_negative.shape)}"
        )
    positive = critic(x, y)
    negative = critic(x.unsqueeze(1), y_negative)
    return Scores(positive, negative, **fields)  # type: ignore[arg-type]
