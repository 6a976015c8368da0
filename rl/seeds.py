"""Many seeds of one agent in one batched update: `StackedAgents([agent_0, ..., agent_{S-1}]).update(batches)`.

The S agents (one algorithm and config, seeds apart) are built as usual, so each starts where its one-seed run
does. Their weights, targets, temperatures and Adam moments are then stacked into tensors `[S, ...]`, and each
agent's own parameters and optimiser state become views of its slice: the agents stay current at every step, so
checkpoints, evaluation and `state_dict` work on each one as in a one-seed run; a state loaded after stacking goes
through `StackedAgents.load_state_dict(s, state)`, which writes seed s's slice.

One update runs each phase of the algorithm once for all seeds, `torch.func.vmap` over the seed axis of the
stacked state and of the batches `[S, B, ...]`: the algorithm file's losses are called as written, on one agent
whose modules hold a seed's slice. Gradients are routed per optimiser (`autograd.grad` of its summed loss over its
own parameters: a stacked parameter is one leaf, so `frozen(...)` cannot reach its slices), and one Adam per
parameter group steps all seeds (Adam is elementwise: each seed's step is its own). Every random draw inside the
update that names an agent's generator (`generator=agent.generator`, MISA's `chain_generator`) is drawn from that
seed's own generator, in the order the one-seed run draws it; a draw with no agent generator is refused by name.
So seed k of a stacked run follows the one-seed run at seed k: same draws, same data, float rounding aside.

Targets (Polyak) and each agent's bookkeeping (`after_update`: IQL's schedule) run per agent on its views.
The hand-written fast paths (`fast: true`) are for one seed; a stacked run uses plain autograd.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor, nn
from torch.func import vmap
from torch.overrides import TorchFunctionMode

from rl.agents.base import Batch, OfflineAgent, routed_gradients

__all__ = ["StackedAgents"]

#: Random functions that must draw from an agent's generator inside a stacked update (a draw from the global
#: stream would be one draw shared by all seeds).
_RANDOM = {
    torch.randn,
    torch.rand,
    torch.randint,
    torch.normal,
    torch.bernoulli,
    torch.multinomial,
    torch.randperm,
    torch.randn_like,
    torch.rand_like,
    torch.randint_like,
    Tensor.normal_,
    Tensor.uniform_,
    Tensor.exponential_,
    Tensor.bernoulli_,
    Tensor.random_,
    Tensor.cauchy_,
    Tensor.geometric_,
    Tensor.log_normal_,
}


#: Random functions with no generator argument (dropout): inside a stacked update they would draw one mask from
#: the global stream for all seeds, so they are refused where they draw (training mode, p > 0).
_UNSEEDED = {
    torch.nn.functional.dropout,
    torch.nn.functional.dropout1d,
    torch.nn.functional.dropout2d,
    torch.nn.functional.dropout3d,
    torch.nn.functional.alpha_dropout,
    torch.nn.functional.feature_alpha_dropout,
}


def _draws(args: tuple, kwargs: dict) -> bool:
    """Whether a dropout call `f(input, p=0.5, training=True, inplace=False)` draws a mask."""
    p = args[1] if len(args) > 1 else kwargs.get("p", 0.5)
    training = args[2] if len(args) > 2 else kwargs.get("training", True)
    return bool(training) and float(p) > 0


#: the entry of Adam's per-parameter state that counts steps (shared by the seeds; the moments are per seed)
_STEP = "step"


class _SeedDraws(TorchFunctionMode):
    """Inside `vmap`: a draw `f(..., generator=g)` from a stacked agent's generator `g` becomes, for seed s, the
    same call on seed s's generator (the stack of the S draws, indexed by the batched seed index)."""

    def __init__(self, streams: dict[int, list[torch.Generator]], seed_index: Tensor) -> None:
        super().__init__()
        self.streams, self.seed_index = streams, seed_index

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        gen = kwargs.get("generator")
        streams = self.streams.get(id(gen)) if gen is not None else None
        if func in _UNSEEDED and _draws(args, kwargs):
            raise RuntimeError(
                f"a stacked update ran {func.__name__} in training mode: its mask comes from the global stream, "
                "one mask for every seed (it takes no generator); stack agents without dropout, or run one "
                "process per seed"
            )
        if streams is None:
            if func in _RANDOM:
                raise RuntimeError(
                    f"a stacked update drew from {getattr(func, '__name__', func)} without one of the agent's "
                    "generators (generator=agent.generator): every seed would get the same draw"
                )
            return func(*args, **kwargs)
        if getattr(func, "__name__", "").endswith("_"):
            raise RuntimeError(
                f"a stacked update drew in place ({func.__name__}) from an agent's generator; draw out of place"
            )
        draws = [func(*args, **{**kwargs, "generator": g}) for g in streams]
        return torch.stack(draws)[self.seed_index]


def _config_difference(a: object, b: object) -> str:
    """The fields in which the agent configs `a` and `b` differ (the seed is not one: the agent holds it)."""
    import dataclasses

    if type(a) is not type(b) or not dataclasses.is_dataclass(a):
        return f"{type(a).__name__} vs {type(b).__name__}"
    keys = [f.name for f in dataclasses.fields(a) if getattr(a, f.name) != getattr(b, f.name)]
    return ", ".join(f"{k}: {getattr(a, k)!r} vs {getattr(b, k)!r}" for k in keys[:3])


def _leaves(agent: OfflineAgent) -> dict[str, Tensor]:
    """Every tensor a stacked update reads or trains, by a qualified name: `module.param` of each agent module
    (parameters and buffers) and `tensors.name` of the agent's own tensors (temperature, dataset statistics)."""
    out: dict[str, Tensor] = {}
    for mname, module in agent.modules.items():
        for pname, p in module.named_parameters(remove_duplicate=False):
            out[f"{mname}.{pname}"] = p
        for bname, b in module.named_buffers(remove_duplicate=False):
            out[f"{mname}.{bname}"] = b
    for tname, t in agent._tensors().items():
        out[f"tensors.{tname}"] = t
    return out


def _set(agent: OfflineAgent, name: str, value: Tensor) -> None:
    """Put `value` where `_leaves(agent)[name]` lives (a module's parameter or buffer slot, or an agent attribute)."""
    head, _, rest = name.partition(".")
    if head == "tensors":
        setattr(agent, rest, value)
        return
    module = agent.modules[head]
    *path, leaf = rest.split(".")
    for part in path:
        module = getattr(module, part)
    slot = module._parameters if leaf in module._parameters else module._buffers
    slot[leaf] = value


@contextmanager
def _holding(agent: OfflineAgent, values: dict[str, Tensor]) -> Iterator[None]:
    """The agent's modules and tensors read `values` (by `_leaves` name) inside the block."""
    saved = _leaves(agent)
    try:
        for name, v in values.items():
            _set(agent, name, v)
        yield
    finally:
        for name, v in saved.items():
            _set(agent, name, v)


class StackedAgents:
    """S agents of one algorithm and config (seeds apart) trained by one batched update.

    Args:
        agents: the S agents, built (and, for a resume, loaded) as one-seed runs build them; from here on their
            parameters and Adam moments are views of the stacked state, so keep using them for acting,
            checkpoints and `state_dict`, and `update` here for training.

    `update(batches)` takes one raw minibatch per seed (`[B, ...]` each, as `OfflineAgent.update` takes) and
    returns one log dict per seed (detached 0-d tensors).
    """

    def __init__(self, agents: Sequence[OfflineAgent]) -> None:
        agents = list(agents)
        if not agents:
            raise ValueError("agents must hold at least one agent")
        first = agents[0]
        for i, a in enumerate(agents):
            if type(a) is not type(first):
                raise ValueError(
                    f"agents[{i}] is a {type(a).__name__}; agents[0] is a {type(first).__name__}"
                )
            if a.num_updates != first.num_updates:
                raise ValueError(
                    f"agents[{i}] has {a.num_updates} updates, agents[0] {first.num_updates}: stack agents at "
                    "one step"
                )
            other = _config_difference(a.cfg, first.cfg)
            if a.total_steps != first.total_steps:
                other = f"total_steps: {a.total_steps!r} vs {first.total_steps!r}"
            if other:
                raise ValueError(
                    f"agents[{i}] has another config than agents[0] ({other}); stacked agents differ by seed "
                    "only"
                )
            if a.fast:
                raise ValueError(
                    f"agents[{i}] runs the one-seed fast paths (fast: true); a stacked run uses plain autograd "
                    "(build the agents with fast: false)"
                )
        self.agents, self.template = agents, first
        per_agent = [_leaves(a) for a in agents]
        names = list(per_agent[0])
        for i, leaves in enumerate(per_agent):
            if list(leaves) != names or any(leaves[n].shape != per_agent[0][n].shape for n in names):
                raise ValueError(f"agents[{i}] has other networks or shapes than agents[0]")
        # The stacked state; each agent's own tensors become views of its slice.
        self.state: dict[str, Tensor] = {}
        for n in names:
            like = per_agent[0][n]
            stacked = torch.stack([leaves[n].detach() for leaves in per_agent])
            if isinstance(like, nn.Parameter) or like.requires_grad:
                stacked = nn.Parameter(stacked, requires_grad=like.requires_grad)
            self.state[n] = stacked
            for s, a in enumerate(agents):
                _set(a, n, self._view(n, s, like))
        self._by_id = {id(t): n for n, t in per_agent[0].items()}
        self.optimizers = {k: self._stack_optimizer(k) for k in first.optimizers}
        self._by_id = {id(t): n for n, t in self.state.items()}
        self._rebind_optimizers()
        gens = [{k: g for k, g in vars(a).items() if isinstance(g, torch.Generator)} for a in agents]
        self.streams = {id(g): [gs[k] for gs in gens] for k, g in gens[0].items()}

    def _view(self, name: str, s: int, like: Tensor) -> Tensor:
        """Seed s's slice of the stacked `name`, as the kind of tensor `like` is (a parameter, or one that
        requires grad)."""
        view = self.state[name].detach()[s]
        if isinstance(like, nn.Parameter):
            return nn.Parameter(view, requires_grad=like.requires_grad)
        return view.requires_grad_(True) if like.requires_grad else view

    def load_state_dict(self, s: int, state: dict) -> None:
        """Load `state` (an agent's `state_dict`, at this stack's step) into agent s and its slice of the stacked
        state. The agent's own `load_state_dict` alone would not reach the stacked update: it replaces some of its
        tensors (Adam's moments, the dataset statistics) with new ones."""
        agent = self.agents[s]
        if int(state["num_updates"]) != agent.num_updates:
            raise ValueError(
                f"state is at update {int(state['num_updates'])}, the stack at {agent.num_updates}: load a state "
                "of the stack's step (Adam's step count is one for all seeds)"
            )
        agent.load_state_dict(state)
        with torch.no_grad():
            for name, t in _leaves(agent).items():
                stacked = self.state[name]
                if t.untyped_storage().data_ptr() != stacked.untyped_storage().data_ptr():  # replaced
                    stacked.detach()[s].copy_(t.detach())
                    _set(agent, name, self._view(name, s, t))
        for key, stacked_opt in self.optimizers.items():
            own = agent.optimizers[key]
            for g_st, g_own in zip(stacked_opt.param_groups, own.param_groups):
                for p_st, p_own in zip(g_st["params"], g_own["params"]):
                    loaded, st = own.state.get(p_own, {}), stacked_opt.state.get(p_st, {})
                    if bool(loaded) != bool(st):
                        raise ValueError(
                            f"optimizer {key!r}: the state has Adam moments where the stack has none"
                        )
                    for k, v in loaded.items():
                        if k != _STEP:
                            st[k][s].copy_(v)
                        elif float(v) != float(st[k]):
                            raise ValueError(
                                f"optimizer {key!r}: the state's Adam step {float(v)} is not the stack's"
                            )
            self._share_moments(key, s)

    # -- optimisers ---------------------------------------------------------------------------------------------
    def _stack_optimizer(self, key: str) -> torch.optim.Optimizer:
        opts = [a.optimizers[key] for a in self.agents]
        groups = [
            {**group, "params": [self.state[self._name_of(p, key)] for p in group["params"]]}
            for group in opts[0].param_groups
        ]
        stacked = type(opts[0])(groups, **opts[0].defaults)
        # Adam's moments: stacked from the agents' (a resumed run's), or zeros as Adam's first step makes them.
        for gi, group in enumerate(stacked.param_groups):
            for pi, p in enumerate(group["params"]):
                states = [o.state.get(o.param_groups[gi]["params"][pi], {}) for o in opts]
                if any(not st for st in states):
                    if any(st for st in states):
                        raise ValueError(f"optimizer {key!r}: some agents have Adam state and some none")
                    continue
                steps = {float(st[_STEP]) for st in states}
                if len(steps) > 1:
                    raise ValueError(f"optimizer {key!r}: the agents' Adam steps differ ({sorted(steps)})")
                # The step count is one for all seeds; every other entry (the moments, 0-d for a scalar parameter
                # such as log_alpha too) is each seed's own.
                stacked.state[p] = {
                    k: states[0][k].clone() if k == _STEP else torch.stack([st[k] for st in states])
                    for k in states[0]
                }
        return stacked

    def _name_of(self, p: Tensor, key: str) -> str:
        name = self._by_id.get(id(p))
        if name is None:
            raise ValueError(
                f"optimizer {key!r} trains a tensor that is not among the agent's modules or tensors"
            )
        return name

    def _rebind_optimizers(self) -> None:
        """Each agent's optimisers over its views, with its Adam moments as views of the stacked moments (so an
        agent's `state_dict` is its seed's optimiser state at every step)."""
        for key, stacked in self.optimizers.items():
            for s, a in enumerate(self.agents):
                old = a.optimizers[key]
                leaves = _leaves(a)
                for gi, group in enumerate(old.param_groups):
                    group["params"] = [
                        leaves[self._name_of(q, key)] for q in stacked.param_groups[gi]["params"]
                    ]
                old.state.clear()
                self._share_moments(key, s)

    def _share_moments(self, key: str, s: int) -> None:
        stacked, own = self.optimizers[key], self.agents[s].optimizers[key]
        for g_st, g_own in zip(stacked.param_groups, own.param_groups):
            for p_st, p_own in zip(g_st["params"], g_own["params"]):
                st = stacked.state.get(p_st)
                if st:
                    own.state[p_own] = {k: v if k == _STEP else v[s] for k, v in st.items()}

    # -- the update -----------------------------------------------------------------------------------------------
    def update(self, batches: Sequence[Batch]) -> list[dict[str, Tensor]]:
        """One update of every seed on its own minibatch; one log dict per seed."""
        if len(batches) != len(self.agents):
            raise ValueError(
                f"batches must hold one minibatch per agent ({len(self.agents)}); got {len(batches)}"
            )
        keys = list(batches[0])
        batch = {k: torch.stack([b[k] for b in batches]) for k in keys}
        template, names = self.template, list(self.state)
        seed_index = torch.arange(len(self.agents), device=template.device)
        logs: dict[str, Tensor] = {}
        for phase in template.phases():

            def run(index: Tensor, values: dict[str, Tensor], raw: Batch, phase=phase):
                with _holding(template, values), _SeedDraws(self.streams, index), routed_gradients():
                    objectives, info = phase(template.prepare(raw))
                missing = [k for k, v in objectives.items() if v is None]
                if missing:
                    raise RuntimeError(
                        f"phase {phase.__name__} backpropagated {missing} itself (a fast path)"
                    )
                return objectives, info

            values = {n: self.state[n] for n in names}
            objectives, info = vmap(run, randomness="same")(seed_index, values, batch)
            todo = list(objectives.items())
            for i, (key, loss) in enumerate(todo):
                opt = self.optimizers[key]
                params = [p for g in opt.param_groups for p in g["params"]]
                grads = torch.autograd.grad(
                    loss.sum(), params, retain_graph=i < len(todo) - 1, allow_unused=True
                )
                for p, g in zip(params, grads):
                    p.grad = None if g is None else g.contiguous()
            for key, _ in todo:
                self.optimizers[key].step()
                self.optimizers[key].zero_grad(set_to_none=True)
            logs.update(info)
        for key, stacked in self.optimizers.items():
            if len(stacked.state) != len(template.optimizers[key].state):  # Adam made its moments just now
                for s in range(len(self.agents)):
                    self._share_moments(key, s)
        for a in self.agents:
            with warnings.catch_warnings():  # the agents' own optimisers never step: the stacked ones do
                warnings.filterwarnings(
                    "ignore", re.escape("Detected call of `lr_scheduler.step()`"), UserWarning
                )
                a.after_update()
            a.num_updates += 1
        for key, stacked in self.optimizers.items():  # a schedule (IQL's) moved each agent's rate alike
            for g_st, g_own in zip(stacked.param_groups, template.optimizers[key].param_groups):
                g_st["lr"] = g_own["lr"]
        return [{k: v[s] for k, v in logs.items()} for s in range(len(self.agents))]
