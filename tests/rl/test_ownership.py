"""Each agent's losses reach only their own parameters: the objective an optimiser minimises has a gradient on the
parameters that optimiser steps, and none (None or exactly zero) on any other trainable tensor of the agent.

This is what lets `OfflineAgent.update` backpropagate the sum of a phase's objectives once and step every optimiser
(rl/agents/base.py): a loss that leaked into another group's parameters (a critic loss that moves the policy, an
actor loss that moves the critic, a temperature loss that moves the policy) would change that group's update
silently. Checked for every algorithm, and for the MI agent with estimators of each kind (the MISA family with an
MCMC chain, a reparameterised or a self-normalised partition term, score-only bounds, one with its own learned
parameters, and Barber-Agakov).

An objective given as None was backpropagated by the phase itself (the MI agent does this to overlap the critic's
backward pass with its MCMC chain; `update` then steps it without a second backward): its gradient is read from
the ``.grad`` fields that the phase left, which start cleared.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from rl.agents import make_agent, train_config

B, DO, DA = 6, 3, 2
# log_alpha away from 0: at exactly 0 a temperature loss that leaked into the policy would have a zero gradient there
TINY = {"hidden_q": (8, 8), "hidden_pi": (8, 8), "seed": 3, "init_log_alpha": -0.7}
MI = {"n_negatives": 4}

MCMC = {**MI, "estimator": "misa", "estimator_options": {"n_samples": 3, "burn_in": 2}}
#: (algorithm, config overrides, torch threads); the MI agent with estimators of every kind it treats differently.
#: With 2 threads the MCMC chain runs beside the critic's backward pass, which the phase then runs itself.
CASES = {
    "mi-misa": ("mi", MCMC, 1),
    "mi-misa-2-threads": ("mi", MCMC, 2),
    "mi-misa-biased": ("mi", {**MI, "estimator": "misa-biased"}, 1),
    "mi-misa-dv": ("mi", {**MI, "estimator": "misa-dv"}, 1),
    "mi-nwj": ("mi", {**MI, "estimator": "nwj"}, 1),
    "mi-infonce": ("mi", {**MI, "estimator": "infonce"}, 1),
    "mi-tuba": ("mi", {**MI, "estimator": "tuba", "estimator_options": {"learned_baseline": True}}, 1),
    "mi-ba": ("mi", {**MI, "estimator": "ba"}, 1),
    "cql": ("cql", {"n_actions": 3}, 1),
    "iql": ("iql", {}, 1),
    "td3bc": ("td3bc", {}, 1),
    "bc": ("bc", {}, 1),
}


def random_batch(seed: int = 0) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "observations": torch.randn(B, DO, generator=g),
        "actions": torch.rand(B, DA, generator=g) * 2 - 1,
        "rewards": torch.randn(B, generator=g),
        "next_observations": torch.randn(B, DO, generator=g),
        "dones": (torch.rand(B, generator=g) < 0.3).float(),
    }


def owned(agent) -> dict[str, list[Tensor]]:
    """Optimiser name -> the tensors it steps."""
    return {
        name: [p for group in opt.param_groups for p in group["params"]]
        for name, opt in agent.optimizers.items()
    }


def trainable(agent) -> list[Tensor]:
    """Every tensor of the agent that can receive a gradient: what any optimiser steps, and any module parameter
    that requires a gradient (one that no optimiser steps must receive none)."""
    out: dict[int, Tensor] = {}
    for params in owned(agent).values():
        out.update((id(p), p) for p in params)
    for module in agent.modules.values():
        out.update((id(p), p) for p in module.parameters() if p.requires_grad)
    return list(out.values())


def phases(agent) -> list:
    """Every loss function the agent runs in some update (TD3+BC's actor phase comes every `policy_freq`-th)."""
    seen: dict[str, object] = {}
    count = agent.num_updates
    try:
        for n in range(4):
            agent.num_updates = n
            for phase in agent.phases():
                seen.setdefault(phase.__name__, phase)
    finally:
        agent.num_updates = count
    return list(seen.values())


def _nonzero(g: Tensor | None) -> bool:
    return g is not None and bool(torch.any(g != 0))


def leaks(agent, batch: dict[str, Tensor]) -> list[str]:
    """What breaks ownership on `batch`: for every objective of every phase, each trainable tensor outside its
    optimiser that gets a nonzero gradient, or the objective reaching none of its own."""
    groups, params = owned(agent), trainable(agent)
    where = {id(p): f"{name}[{i}]" for name, ps in groups.items() for i, p in enumerate(ps)}
    for module_name, module in agent.modules.items():
        for pname, p in module.named_parameters():
            where[id(p)] = (
                f"{module_name}.{pname} ({where[id(p)]})" if id(p) in where else f"{module_name}.{pname}"
            )
    problems = []
    batch = agent.prepare(batch)
    for phase in phases(agent):
        for p in params:
            p.grad = None
        objectives, _ = phase(batch)
        assert objectives, f"{phase.__name__} returned no objective"
        for name, objective in objectives.items():
            assert name in groups, f"{phase.__name__}: objective {name!r} has no optimiser ({sorted(groups)})"
            if objective is None:  # backpropagated by the phase: its gradient is in .grad
                grads = [p.grad for p in params]
            else:
                assert objective.dim() == 0 and torch.isfinite(objective), (name, objective)
                grads = torch.autograd.grad(objective, params, retain_graph=True, allow_unused=True)
            mine = {id(p) for p in groups[name]}
            for p, g in zip(params, grads):
                if id(p) not in mine and _nonzero(g):
                    problems.append(f"{phase.__name__}: {name!r} objective reaches {where.get(id(p), '?')}")
            if not any(_nonzero(g) for p, g in zip(params, grads) if id(p) in mine):
                problems.append(f"{phase.__name__}: {name!r} objective reaches none of its own parameters")
    for p in params:
        p.grad = None
    return problems


@pytest.mark.parametrize("case", list(CASES))
def test_each_objective_reaches_only_its_own_parameters(case: str) -> None:
    algo, overrides, threads = CASES[case]
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        agent = make_agent(train_config(algo, **TINY, **overrides), DO, DA)
        groups = owned(agent)
        # no tensor is stepped by two optimisers
        ids = [id(p) for ps in groups.values() for p in ps]
        assert len(ids) == len(set(ids)), f"{case}: a tensor is in two optimisers"
        for seed in (0, 1):
            problems = leaks(agent, random_batch(seed))
            assert not problems, f"{case}: " + "; ".join(problems)
    finally:
        torch.set_num_threads(old)


def test_a_leak_is_caught() -> None:
    """The check itself: an actor loss that also moves the critic, and a critic loss that reaches no critic weight,
    are both reported."""
    agent = make_agent(train_config("td3bc", **TINY), DO, DA)
    actor_losses, critic_losses = agent.actor_losses, agent.critic_losses

    def leaky_actor(batch):
        objectives, logs = actor_losses(batch)
        q = agent.critic(batch["observations"], batch["actions"]).mean()  # not frozen: reaches the critic
        return {"actor": objectives["actor"] + q}, logs

    def blind_critic(batch):
        objectives, logs = critic_losses(batch)
        return {"critic": agent.policy(batch["observations"]).mean.square().mean()}, logs

    leaky_actor.__name__, blind_critic.__name__ = "actor_losses", "critic_losses"
    agent.actor_losses, agent.critic_losses = leaky_actor, blind_critic
    problems = leaks(agent, random_batch())
    assert any("'actor' objective reaches critic." in p for p in problems), problems
    assert any("'critic' objective reaches policy." in p for p in problems), problems
    assert any("'critic' objective reaches none of its own" in p for p in problems), problems
