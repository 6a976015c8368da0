"""The official MISA code (sail-sg/MISA, JAX) as a test oracle for `benchmarks/misa_parity.py`.

Runs in the official code's own virtual environment (jax/jaxlib 0.4.30, flax 0.8.5, optax 0.2.3, chex 0.1.86,
distrax 0.1.5, tensorflow-probability 0.24.0, ml_collections, numpy<2, h5py, cloudpickle), never in ours: it imports
the official modules, unchanged, from the checkout named on the command line and talks to our side through `.npz`
files only (no torch here, nothing of the project imported).

    python misa_official_driver.py OFFICIAL_DIR update IN.npz OUT.npz
    python misa_official_driver.py OFFICIAL_DIR train DATA.hdf5 OUT_DIR --steps 3000 --seed 0 --eval-every 500

`update`: one `MISA._train_step` from the weights, batch, policy noise and MCMC samples in IN.npz (flattened flax
parameter paths such as `policy/params/base_network/Dense_0/kernel`). The policy's Gaussian noise is injected
by a subclass of the official `TanhGaussianPolicy` that replaces only the draw `eps ~ N(0, I)` (the rest of its
`__call__` is the official computation); the MCMC samples by a stand-in for `tfp.mcmc` that returns them (and
records the kernel's settings). Writes the losses, each model's gradients (recorded by a `TrainState` that keeps
the gradients it applies), the updated parameters and targets, the official tilted log-density and its action
gradient at the given points, and the acceptance rate of the official HMC chain (real TFP, official settings).

`train`: the official agent with its default config (hopper: target entropy -|A|) on a D4RL-format HDF5 file,
batches drawn as the official `RandSampler` does (`np.random.randint`, seeded by the official `set_random_seed`),
the policy's parameters saved at step 0 and every `--eval-every` steps, for our side to evaluate with the same
protocol as our own runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import types
from typing import Any

import numpy as np


def _import_official(official_dir: str) -> dict[str, Any]:
    sys.path.insert(0, os.path.abspath(official_dir))
    import jax

    if not hasattr(
        jax, "tree_multimap"
    ):  # removed from JAX after 0.3; the only change the official code needs
        jax.tree_multimap = jax.tree_util.tree_map
    # `utilities.utils` imports wandb at the top for its logger, which the oracle does not use.
    sys.modules.setdefault("wandb", types.ModuleType("wandb"))
    import algos.misa as misa_module
    from algos.misa import MISA
    from algos.model import FullyConnectedQFunction, TanhGaussianPolicy
    from utilities.jax_utils import batch_to_jax
    from utilities.utils import set_random_seed

    return {
        "jax": jax,
        "misa_module": misa_module,
        "MISA": MISA,
        "FullyConnectedQFunction": FullyConnectedQFunction,
        "TanhGaussianPolicy": TanhGaussianPolicy,
        "batch_to_jax": batch_to_jax,
        "set_random_seed": set_random_seed,
    }


def _flat(params: Any) -> dict[str, np.ndarray]:
    from flax.core import unfreeze
    from flax.traverse_util import flatten_dict

    return {k: np.asarray(v) for k, v in flatten_dict(unfreeze(params), sep="/").items()}


def _replace(params: Any, arrays: dict[str, np.ndarray], prefix: str) -> Any:
    """`params` with every leaf taken from `arrays[prefix + path]`; every leaf must be there, shapes equal."""
    import jax.numpy as jnp
    from flax.core import unfreeze
    from flax.traverse_util import flatten_dict, unflatten_dict

    flat = flatten_dict(unfreeze(params), sep="/")
    out = {}
    for path, leaf in flat.items():
        key = f"{prefix}/{path}"
        if key not in arrays:
            raise KeyError(
                f"{key} missing from the input (has: {sorted(k for k in arrays if k.startswith(prefix))})"
            )
        value = np.asarray(arrays[key], np.float32)
        if value.shape != np.shape(leaf):
            raise ValueError(f"{key}: shape {value.shape}, official {np.shape(leaf)}")
        out[path] = jnp.asarray(value)
    return unflatten_dict(out, sep="/")


def _models(o: dict[str, Any], obs_dim: int, act_dim: int, policy_cls: Any = None) -> tuple[Any, Any]:
    # experiments/main.py's defaults: policy 256-256, no orthogonal init, log-std multiplier 1 / offset -1,
    # Q 256-256 ELU, no layer norm.
    policy = (policy_cls or o["TanhGaussianPolicy"])(
        obs_dim, act_dim, "256-256", False, 1.0, -1.0, use_layer_norm=False
    )
    qf = o["FullyConnectedQFunction"](obs_dim, act_dim, "256-256", False, False, "elu")
    return policy, qf


def _agent(o: dict[str, Any], policy: Any, qf: Any, act_dim: int) -> Any:
    cfg = o["MISA"].get_default_config()
    cfg.target_entropy = -float(act_dim)  # what experiments/main.py sets when the default (0.0) is >= 0
    return o["MISA"](cfg, policy, qf)


# ----------------------------------------------------------------------------------------------------------------
# update
# ----------------------------------------------------------------------------------------------------------------
def update(official_dir: str, in_path: str, out_path: str) -> None:
    o = _import_official(official_dir)
    jax = o["jax"]
    import distrax
    import jax.numpy as jnp
    from algos.model import LOG_SIG_MAX, LOG_SIG_MIN, MEAN_MAX, MEAN_MIN
    from flax.training.train_state import TrainState
    from tensorflow_probability.substrates import jax as tfp
    from utilities.jax_utils import extend_and_repeat, init_rng

    data = dict(np.load(in_path))
    obs_dim, act_dim = data["batch/observations"].shape[1], data["batch/actions_clipped"].shape[1]
    init_rng(0)

    # The draws eps of the official `__call__`, in the order its loss function makes them: the reparameterised
    # action at s, the target action at s', K actions at s (the critic's negatives), K at s' (unused by MISA).
    noise = [
        data["noise/new"],
        data["noise/next"],
        data["noise/negatives"],
        np.zeros_like(data["noise/negatives"]),
    ]
    calls = {"n": 0, "on": False}

    class NoisePolicy(o["TanhGaussianPolicy"]):
        def __call__(self, rng, observations, deterministic=False, repeat=None):
            if not calls["on"]:
                return super().__call__(rng, observations, deterministic, repeat)
            eps = jnp.asarray(noise[calls["n"] % 4])
            calls["n"] += 1
            if repeat is not None:
                observations = extend_and_repeat(observations, 1, repeat)
            mean, log_std = jnp.split(self.base_network(observations), 2, axis=-1)
            mean = jnp.clip(mean, MEAN_MIN, MEAN_MAX)
            log_std = self.log_std_multiplier_module() * log_std + self.log_std_offset_module()
            log_std = jnp.clip(log_std, LOG_SIG_MIN, LOG_SIG_MAX)
            base = distrax.MultivariateNormalDiag(mean, jnp.exp(log_std))
            x = mean + jnp.exp(log_std) * eps  # = base.sample(seed) with that eps
            y, fldj = distrax.Block(distrax.Tanh(), ndims=1).forward_and_log_det(x)
            return y, base.log_prob(x) - fldj

    chain_settings: dict[str, Any] = {}
    samples_t = jnp.asarray(np.transpose(data["mcmc/actions"], (1, 0, 2)))  # official layout [S, B, da]

    def fixed_chain(num_results, num_burnin_steps, current_state, kernel, trace_fn, seed):
        chain_settings.update(num_results=num_results, num_burnin_steps=num_burnin_steps, **kernel)
        chain_settings["initial_state_shape"] = list(current_state.shape)  # the batch's actions, [B, da]
        return samples_t, None

    fixed_mcmc = types.SimpleNamespace(
        SimpleStepSizeAdaptation=lambda inner, num_adaptation_steps: {
            **inner,
            "num_adaptation_steps": num_adaptation_steps,
        },
        HamiltonianMonteCarlo=lambda target_log_prob_fn, num_leapfrog_steps, step_size: {
            "num_leapfrog_steps": num_leapfrog_steps,
            "step_size": step_size,
        },
        sample_chain=fixed_chain,
    )

    class RecordingState(TrainState):
        grads: Any = None

        def apply_gradients(self, *, grads, **kwargs):
            return super().apply_gradients(grads=grads, **kwargs).replace(grads=grads)

    policy, qf = _models(o, obs_dim, act_dim, NoisePolicy)
    agent = _agent(o, policy, qf, act_dim)
    pre = {}  # the pre-update parameters, ours
    for key, state in agent._train_states.items():
        pre[key] = _replace(state.params, data, key)
        agent._train_states[key] = RecordingState.create(apply_fn=None, params=pre[key], tx=state.tx)
    agent._target_qf_params = {
        k: _replace(agent._target_qf_params[k], data, f"{k}_target") for k in ("qf1", "qf2")
    }

    # experiments/main.py clips the dataset's actions to +-0.999
    batch = {
        "observations": data["batch/observations"],
        "actions": data["batch/actions_clipped"],
        "rewards": data["batch/rewards"],
        "next_observations": data["batch/next_observations"],
        "dones": data["batch/dones"],
    }
    batch = o["batch_to_jax"](batch)
    real_tfp = o["misa_module"].tfp
    o["misa_module"].tfp = types.SimpleNamespace(mcmc=fixed_mcmc)
    calls["on"] = True
    try:
        metrics = agent.train(batch)
    finally:
        calls["on"] = False
        o["misa_module"].tfp = real_tfp
    if calls["n"] % 4 or calls["n"] == 0:
        raise RuntimeError(f"the policy was called {calls['n']} times; expected a multiple of 4 per trace")

    out: dict[str, np.ndarray] = {f"metric/{k}": np.asarray(v) for k, v in metrics.items()}
    for key, state in agent._train_states.items():
        out.update({f"grad/{key}/{p}": v for p, v in _flat(state.grads).items()})
        out.update({f"new/{key}/{p}": v for p, v in _flat(state.params).items()})
    for key in ("qf1", "qf2"):
        out.update({f"new/{key}_target/{p}": v for p, v in _flat(agent._target_qf_params[key]).items()})
    out["chain_settings"] = np.asarray(json.dumps(chain_settings, default=str))

    # The official tilted log-density `log pi(a|s) + min Q(s, a)` (its closure's body, with the pre-update
    # parameters) and its action gradient at the given points.
    obs_j = jnp.asarray(batch["observations"])

    def log_prob(x):
        action_prob = policy.apply(pre["policy"], obs_j, x, method=policy.log_prob)
        q = jnp.minimum(qf.apply(pre["qf1"], obs_j, x), qf.apply(pre["qf2"], obs_j, x))
        return action_prob + q

    points = jnp.asarray(data["density/points"])
    out["density/value"] = np.asarray(log_prob(points))
    # Rows are independent, so the gradient of the sum is the per-row action gradient.
    out["density/grad"] = np.asarray(jax.grad(lambda x: log_prob(x).sum())(points))

    # The official chain itself (real TFP, the official kernel settings), on the same weights and batch: its
    # acceptance rate, for comparison with ours (different random streams, so a statistical comparison).
    cfg = agent.config
    kernel = tfp.mcmc.SimpleStepSizeAdaptation(
        tfp.mcmc.HamiltonianMonteCarlo(
            target_log_prob_fn=log_prob,
            num_leapfrog_steps=cfg.mcmc_num_leapfrog_steps,
            step_size=cfg.mcmc_step_size,
        ),
        num_adaptation_steps=int(cfg.mcmc_burnin_steps * 0.8),
    )
    accepted = []
    for seed in range(int(data.get("mcmc/official_repeats", 4))):
        _, acc = tfp.mcmc.sample_chain(
            num_results=cfg.n_actions,
            num_burnin_steps=cfg.mcmc_burnin_steps,
            current_state=jnp.asarray(batch["actions"]),
            kernel=kernel,
            trace_fn=lambda _, pkr: pkr.inner_results.is_accepted,
            seed=jax.random.PRNGKey(seed),
        )
        accepted.append(np.asarray(acc, np.float64).mean())
    out["official_chain/accept"] = np.asarray(accepted)
    _save(out_path, out)


def _save(path: str, arrays: dict[str, np.ndarray]) -> None:
    tmp = f"{path}.tmp.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------------------------
# train
# ----------------------------------------------------------------------------------------------------------------
def train(official_dir: str, data_path: str, out_dir: str, steps: int, seed: int, eval_every: int) -> None:
    import h5py

    o = _import_official(official_dir)
    os.makedirs(out_dir, exist_ok=True)
    with h5py.File(data_path, "r") as f:
        data = {
            k: np.asarray(f[k])
            for k in ("observations", "actions", "rewards", "next_observations", "terminals")
        }
    # experiments/main.py: raw locomotion rewards, actions clipped to +-0.999, dones = terminals.
    dataset = {
        "observations": data["observations"].astype(np.float32),
        "actions": np.clip(data["actions"], -0.999, 0.999).astype(np.float32),
        "rewards": data["rewards"].astype(np.float32),
        "next_observations": data["next_observations"].astype(np.float32),
        "dones": data["terminals"].astype(np.float32),
    }
    n, obs_dim = dataset["observations"].shape
    act_dim = dataset["actions"].shape[1]
    o["set_random_seed"](seed)
    policy, qf = _models(o, obs_dim, act_dim)
    agent = _agent(o, policy, qf, act_dim)

    def save(step: int) -> None:
        _save(os.path.join(out_dir, f"policy_{step:07d}.npz"), _flat(agent.train_params["policy"]))

    save(0)
    log = open(os.path.join(out_dir, "progress.jsonl"), "a")
    start = time.time()
    for step in range(1, steps + 1):
        idx = np.random.randint(n, size=256)  # noqa: NPY002 (the official RandSampler, seeded by set_random_seed)
        metrics = agent.train(o["batch_to_jax"]({k: v[idx] for k, v in dataset.items()}))
        if step % eval_every == 0:
            save(step)
            row = {"step": step, "seconds": time.time() - start, **{k: float(v) for k, v in metrics.items()}}
            log.write(json.dumps(row) + "\n")
            log.flush()
    log.close()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("official_dir")
    sub = p.add_subparsers(dest="cmd", required=True)
    u = sub.add_parser("update")
    u.add_argument("inp")
    u.add_argument("out")
    t = sub.add_parser("train")
    t.add_argument("data")
    t.add_argument("out_dir")
    t.add_argument("--steps", type=int, default=3000)
    t.add_argument("--seed", type=int, default=42)
    t.add_argument("--eval-every", type=int, default=500)
    a = p.parse_args(argv)
    if a.cmd == "update":
        update(a.official_dir, a.inp, a.out)
    else:
        train(a.official_dir, a.data, a.out_dir, a.steps, a.seed, a.eval_every)


if __name__ == "__main__":
    main()
