"""Parity of our MISA port with the official code (sail-sg/MISA, JAX), the official code run as an oracle.

    # once: the official checkout and its own venv (see docs/rl.md, "Parity with the official MISA")
    python benchmarks/misa_parity.py update --official ../misa-official --official-python ../.venv-misa-official/bin/python
    python benchmarks/misa_parity.py train  --official ../misa-official --official-python ../.venv-misa-official/bin/python \
        --seeds 0 1 2 --steps 3000 --eval-every 500

`update`: from the same weights (ours, mapped onto the official flax parameters), the same batch of
hopper-medium-v5, the same Gaussian noise of every policy draw (ours, replayed from our generator's state) and the
same MCMC samples fed to the policy term (our chain's), one update runs on each side; the losses, every gradient,
the updated parameters and targets, and the HMC target density with its action gradient are compared. Done twice:
at initialisation and after `--warmup` of our own updates (so that Q and the policy are far from their initial
values). The official HMC chain (real TFP) also runs on the same weights and batch; its acceptance rate is
compared with ours. Writes `benchmarks/results/misa_parity.md` (+ `.json`) and exits 1 if a tolerance fails.

`train`: both train MISA at the official settings on the same exported D4RL-format HDF5 file of
hopper-medium-v5, for `--steps` updates and each `--seeds`; the official policies saved every `--eval-every`
steps are evaluated by our evaluation (same env Hopper-v5, same episode seeds, deterministic tanh(mean), D4RL
normalised score with our references), so the two curves differ only by the training code. Writes
`benchmarks/results/misa_parity_curves.csv`, `.json` (command, seeds, behaviour score), `.md` and `.png`. Runs
resume: finished official and our runs are reused.

`report`: rebuild the curves' `.md` and `.png` from the `.csv` and `.json` in `--out` alone (no checkout needed).

Not part of CI (it needs the official checkout and its venv); the numbers are quoted in docs/rl.md.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rl._atomic import atomic_write, atomic_write_csv  # noqa: E402
from rl.agents import make_agent  # noqa: E402
from rl.agents.mi import MIAgent  # noqa: E402
from rl.data import load  # noqa: E402
from rl.networks import QEnsemble, TanhGaussianPolicy  # noqa: E402
from rl.train import build_config  # noqa: E402

DRIVER = ROOT / "benchmarks" / "misa_official_driver.py"
CONFIG = ROOT / "configs" / "misa" / "hopper-medium-v5.yaml"
RESULTS = ROOT / "benchmarks" / "results"
DATASET = "hopper-medium-v5"
ENV_ID = "Hopper-v5"
# Relative tolerances: max |ours - official| / max |official| per tensor (float32 on both sides; XLA and torch
# order their reductions differently, so sums over 12.8k rows agree to ~1e-6 relative, not bitwise).
TOL_LOSS, TOL_GRAD, TOL_PARAM = 1e-4, 1e-3, 1e-5
# Adam's first step, in units of the learning rate, over gradient entries above `NOISE_FLOOR` x the largest one.
TOL_STEP, NOISE_FLOOR = 1e-3, 1e-4


# ----------------------------------------------------------------------------------------------------------------
# Our networks <-> the official flax parameters (flattened paths, e.g. policy/params/base_network/Dense_0/kernel)
# ----------------------------------------------------------------------------------------------------------------
def policy_to_flax(
    policy: TanhGaussianPolicy, prefix: str = "policy", grad: bool = False
) -> dict[str, np.ndarray]:
    """The policy's parameters (or, with `grad`, their gradients) under the official flax paths."""

    def t(p: torch.Tensor) -> np.ndarray:
        return (p.grad if grad else p.detach()).numpy().copy()

    linears = [m for m in policy.net if isinstance(m, torch.nn.Linear)]
    out = {}
    for i, lin in enumerate(linears):
        out[f"{prefix}/params/base_network/Dense_{i}/kernel"] = t(lin.weight).T.copy()
        out[f"{prefix}/params/base_network/Dense_{i}/bias"] = t(lin.bias)
    out[f"{prefix}/params/log_std_multiplier_module/value"] = t(policy.log_std_multiplier)
    out[f"{prefix}/params/log_std_offset_module/value"] = t(policy.log_std_offset)
    return out


def policy_from_flax(policy: TanhGaussianPolicy, flat: dict[str, np.ndarray], prefix: str = "") -> None:
    """Load official policy parameters (keys `params/base_network/...`, optionally under `prefix/`)."""
    p = f"{prefix}/" if prefix else ""
    linears = [m for m in policy.net if isinstance(m, torch.nn.Linear)]
    with torch.no_grad():
        for i, lin in enumerate(linears):
            lin.weight.copy_(torch.as_tensor(flat[f"{p}params/base_network/Dense_{i}/kernel"]).T)
            lin.bias.copy_(torch.as_tensor(flat[f"{p}params/base_network/Dense_{i}/bias"]))
        policy.log_std_multiplier.copy_(torch.as_tensor(flat[f"{p}params/log_std_multiplier_module/value"]))
        policy.log_std_offset.copy_(torch.as_tensor(flat[f"{p}params/log_std_offset_module/value"]))


def _q_tensors(q: QEnsemble, k: int, grad: bool) -> list[tuple[str, torch.Tensor]]:
    def t(p: torch.Tensor) -> torch.Tensor:
        return (p.grad if grad else p.detach())[k]

    rows = [
        ("Dense_0/kernel", torch.cat([t(q.w_obs), t(q.w_act)], 0)),
        ("Dense_0/bias", t(q.b0)[0]),
    ]
    for i, layer in enumerate(q.layers):
        rows += [(f"Dense_{i + 1}/kernel", t(layer.weight)), (f"Dense_{i + 1}/bias", t(layer.bias)[0])]
    return rows


def q_to_flax(
    q: QEnsemble, prefixes: tuple[str, ...] = ("qf1", "qf2"), grad: bool = False
) -> dict[str, np.ndarray]:
    out = {}
    for k, prefix in enumerate(prefixes):
        for name, value in _q_tensors(q, k, grad):
            out[f"{prefix}/params/FullyConnectedNetwork_0/{name}"] = value.numpy().copy()
    return out


# ----------------------------------------------------------------------------------------------------------------
# update
# ----------------------------------------------------------------------------------------------------------------
def _agent(seed: int) -> MIAgent:
    cfg = build_config(CONFIG, {"seed": str(seed), "dataset": DATASET})
    return make_agent(cfg, 11, 3)


def _fresh_copy(agent: MIAgent) -> MIAgent:
    """The same weights with fresh optimisers (the official side starts from fresh Adam states)."""
    other = _agent(agent.seed)
    for name in ("policy", "critic", "critic_target"):
        other.modules[name].load_state_dict(agent.modules[name].state_dict())
    with torch.no_grad():
        other.log_alpha.copy_(agent.log_alpha)
    return other


def _snapshot(agent: MIAgent) -> dict[str, np.ndarray]:
    """Policy, both Q networks, their targets and log alpha under the official flax paths."""
    out = {**policy_to_flax(agent.policy), **q_to_flax(agent.critic)}
    out.update(q_to_flax(agent.critic_target, ("qf1_target", "qf2_target")))
    out["log_alpha/params/value"] = agent.log_alpha.detach().numpy().copy()
    return out


def _one_update(agent: MIAgent, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Our update, recording what the official side needs to replay it: noise, MCMC samples, gradients."""
    gen_state = agent.generator.get_state()
    recorded: dict[str, Any] = {}
    chain = agent._chain

    def recording_chain(*args: Any, **kwargs: Any) -> Any:
        samples = chain(*args, **kwargs)
        recorded.setdefault("u", []).append(samples.unconstrained)
        recorded.setdefault("accept", []).append(samples.accept_rate.reshape(-1))
        return samples

    agent._chain = recording_chain  # type: ignore[method-assign]
    grads: dict[str, np.ndarray] = {}

    def grab(*_: Any) -> None:
        grads.update(policy_to_flax(agent.policy, grad=True))
        grads.update(q_to_flax(agent.critic, grad=True))
        grads["log_alpha/params/value"] = agent.log_alpha.grad.numpy().copy()

    hook = agent.optimizers["critic"].register_step_pre_hook(grab)
    pre = _snapshot(agent)
    try:
        logs = {k: float(v) for k, v in agent.update(batch).items()}
    finally:
        hook.remove()
        del agent._chain
    # Replay our generator's draws, in the order of MIAgent.losses: a' at s' [B, 1, da], the critic's N negatives
    # at s [B, N, da], the reparameterised a~ at s [B, 1, da] (the chain draws from its own generator).
    g = torch.Generator().set_state(gen_state)
    b, da, n = batch["actions"].shape[0], batch["actions"].shape[1], agent.cfg.n_negatives
    eps_next = torch.randn(b, 1, da, generator=g)
    eps_neg = torch.randn(b, n, da, generator=g)
    eps_new = torch.randn(b, 1, da, generator=g)
    u = torch.cat(recorded["u"])  # [B, S, da] unconstrained
    return {
        "pre": pre,
        "new": _snapshot(agent),
        "grads": grads,
        "logs": logs,
        "noise": {"new": eps_new[:, 0].numpy(), "next": eps_next[:, 0].numpy(), "negatives": eps_neg.numpy()},
        "mcmc_u": u,
        "accept": float(torch.cat(recorded["accept"]).mean()),
    }


def _density(agent: MIAgent, obs: torch.Tensor, points: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    with torch.no_grad():
        log_pi, grad_pi = agent.policy(obs).log_prob_and_grad(points)
        q, grad_q = agent.critic.input_gradient(obs)(points)
    return (log_pi + q).numpy(), (grad_pi + grad_q).numpy()


def _rel(ours: np.ndarray, ref: np.ndarray) -> float:
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    scale = max(float(np.abs(ref).max()), 1e-12)
    return float(np.abs(ours - ref).max() / scale)


def compare_update(args: argparse.Namespace, warmup: int) -> dict[str, Any]:
    torch.manual_seed(args.seed)
    dataset = load(DATASET)
    data_gen = torch.Generator().manual_seed(args.seed)
    agent = _agent(args.seed)
    for _ in range(warmup):
        agent.update(dataset.sample(256, data_gen))
    agent = _fresh_copy(agent)
    batch = dataset.sample(256, data_gen)
    prepared = agent.prepare(batch)
    pre_obs, clipped = prepared["observations"], prepared["actions"]
    density_agent = _fresh_copy(agent)  # pre-update weights, for the density check
    ours = _one_update(agent, batch)
    # Our chain again with other random streams, for the acceptance rate's spread (the official side runs 4 seeds).
    accept_ours = [ours["accept"]]
    for rep in range(1, 4):
        again = _fresh_copy(density_agent)
        for i, gen in enumerate(again.chain_generators):
            gen.manual_seed(10_000 * rep + i)
        accept_ours.append(_one_update(again, batch)["accept"])
    points = torch.tanh(ours["mcmc_u"][:, 0]).clamp(-0.999999, 0.999999)  # one retained sample per chain
    d_value, d_grad = _density(density_agent, pre_obs, points)

    arrays: dict[str, np.ndarray] = dict(ours["pre"])
    arrays.update(
        {
            "batch/observations": batch["observations"].numpy(),
            "batch/actions_clipped": clipped.numpy(),
            "batch/rewards": batch["rewards"].numpy(),
            "batch/next_observations": batch["next_observations"].numpy(),
            "batch/dones": batch["dones"].numpy(),
            "noise/new": ours["noise"]["new"],
            "noise/next": ours["noise"]["next"],
            "noise/negatives": ours["noise"]["negatives"],
            "mcmc/actions": torch.tanh(ours["mcmc_u"].double()).float().numpy(),
            "density/points": points.numpy(),
        }
    )
    with tempfile.TemporaryDirectory() as tmp:
        inp, outp = Path(tmp) / "in.npz", Path(tmp) / "out.npz"
        np.savez(inp, **arrays)
        subprocess.run(
            [args.official_python, str(DRIVER), args.official, "update", str(inp), str(outp)],
            check=True,
            env={**os.environ, "JAX_PLATFORMS": "cpu"},
        )
        off = dict(np.load(outp))

    m = {k.removeprefix("metric/"): float(v) for k, v in off.items() if k.startswith("metric/")}
    logs = ours["logs"]
    # The official critic regulariser is logsumexp(Q - log B) - Q(s, a_D) per member; ours logmeanexp over the
    # N policy actions: the same up to the constant log N - log B per member (no gradient effect).
    cw, b = agent.cfg.critic_weight, batch["actions"].shape[0]
    shift = 2 * (math.log(agent.cfg.n_negatives) - math.log(b))
    rows = [
        (
            "critic: TD error (sum of members)",
            logs["critic_td"],
            m["qf1_loss"] + m["qf2_loss"] - cw * (m["cql/qf1_diff"] + m["cql/qf2_diff"]),
            TOL_LOSS,
        ),
        (
            "critic: regulariser (sum, official constant)",
            logs["critic_mi"] + shift,
            m["cql/qf1_diff"] + m["cql/qf2_diff"],
            TOL_LOSS,
        ),
        (
            "actor: -Q + 0.5 BC (official policy_loss)",
            logs["actor_q"] + logs["actor_bc"],
            m["policy_loss"],
            TOL_LOSS,
        ),
        ("actor: 0.5 x BC term", logs["actor_bc"], 0.5 * m["bc_loss"], TOL_LOSS),
        ("temperature loss", logs["alpha_loss"], m["alpha_loss"], TOL_LOSS),
        ("mean log pi(a~|s)", -logs["entropy"], m["log_pi"], TOL_LOSS),
    ]
    loss_rows = [(name, o, r, abs(o - r) / max(abs(r), 1e-12), tol) for name, o, r, tol in rows]

    grad_rows = [
        (key, _rel(g, off[f"grad/{key}"]), float(np.abs(off[f"grad/{key}"]).max()), TOL_GRAD)
        for key, g in sorted(ours["grads"].items())
    ]
    param_rows = _step_rows(ours, off, agent)
    density_rows = [
        (
            "log pi + min Q at the MCMC samples",
            _rel(d_value, off["density/value"]),
            float(np.abs(off["density/value"]).max()),
            TOL_LOSS,
        ),
        ("d/da of it", _rel(d_grad, off["density/grad"]), float(np.abs(off["density/grad"]).max()), TOL_GRAD),
    ]
    return {
        "warmup": warmup,
        "losses": loss_rows,
        "grads": grad_rows,
        "params": param_rows,
        "density": density_rows,
        "chain_settings": json.loads(str(off["chain_settings"])),
        "accept_ours": ", ".join(f"{a:.4f}" for a in accept_ours),
        "accept_official": [float(a) for a in off["official_chain/accept"]],
    }


def _write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def _step_rows(ours: dict[str, Any], off: dict[str, np.ndarray], agent: MIAgent) -> list[tuple]:
    """Updated parameters and targets. Adam's first step moves each entry by `lr g / (|g| + 1e-8)`, i.e. by about
    `lr` in the direction of the gradient's sign: where a gradient entry is at the level of float32 rounding (the
    two codes sum in different orders) its sign, and so its step, may differ. So the step is compared in units of
    the learning rate, over the entries whose official gradient is above that level (the count left out is
    shown); the targets move by `tau` times the step and are compared directly."""
    lrs = {
        "policy": agent.cfg.lr_pi,
        "qf1": agent.cfg.lr_q,
        "qf2": agent.cfg.lr_q,
        "log_alpha": agent.cfg.lr_alpha,
    }
    rows = []
    for key in sorted(ours["new"]):
        model = key.split("/")[0]
        if model.endswith("_target"):
            rows.append((key, _rel(ours["new"][key], off[f"new/{key}"]), 0, TOL_PARAM))
            continue
        pre = np.asarray(ours["pre"][key], np.float64)
        grad = np.abs(np.asarray(off[f"grad/{key}"], np.float64))
        keep = grad > NOISE_FLOOR * max(float(grad.max()), 1e-30)
        step_ours = np.asarray(ours["new"][key], np.float64) - pre
        step_off = np.asarray(off[f"new/{key}"], np.float64) - pre
        err = float(np.abs(step_ours - step_off)[keep].max(initial=0.0)) / lrs[model]
        rows.append((key, err, int((~keep).sum()), TOL_STEP))
    return rows


def _fmt(x: float) -> str:
    return f"{x:.3g}" if abs(x) >= 1e-3 or x == 0 else f"{x:.1e}"


def update_report(results: list[dict[str, Any]], command: str) -> tuple[str, bool]:
    ok = True
    lines = [
        "# MISA: one update, ours vs the official code",
        "",
        f"Made by `{command}`.",
        "",
        "Same weights, batch (256 transitions of hopper-medium-v5), policy noise and MCMC samples on both sides; "
        "relative error = max |ours - official| / max |official| per tensor; float32 on both sides.",
    ]
    for res in results:
        lines += [
            "",
            f"## After {res['warmup']} warm-up updates of ours",
            "",
            "| quantity | ours | official | rel. error | tolerance |",
            "|---|---|---|---|---|",
        ]
        for name, o, r, err, tol in res["losses"]:
            ok &= err <= tol
            lines.append(f"| {name} | {o:.6g} | {r:.6g} | {_fmt(err)} | {tol:g} |")
        for title, rows, header in (
            ("gradients", res["grads"], "| tensor | rel. error | max abs (official) |"),
            ("HMC target density", res["density"], "| quantity | rel. error | max abs (official) |"),
            (
                "updated parameters (Adam's first step, error in units of the learning rate) and targets "
                "(relative error)",
                res["params"],
                "| tensor | error | gradient entries at the rounding level, left out |",
            ),
        ):
            fails = [r for r in rows if r[1] > r[3]]
            ok &= not fails
            worst = max(rows, key=lambda r: r[1] / r[3])
            lines += [
                "",
                f"{title}: {len(rows)} tensors, worst {_fmt(worst[1])} ({worst[0]}, tolerance {worst[3]:g})"
                + (f" **{len(fails)} FAIL**" if fails else ""),
                "",
                header,
                "|---|---|---|",
            ]
            lines += [f"| {k} | {_fmt(e)} | {x:.3g} |" for k, e, x, _ in rows]
        cs = res["chain_settings"]
        lines += [
            "",
            f"Official chain settings seen by the stand-in: {json.dumps(cs)}.",
            f"HMC acceptance on these weights and batch: ours {res['accept_ours']}, official (real TFP, "
            f"{len(res['accept_official'])} seeds) "
            + ", ".join(f"{a:.4f}" for a in res["accept_official"])
            + ".",
        ]
    lines += [
        "",
        "Verdict: " + ("every quantity within tolerance." if ok else "**some quantity out of tolerance.**"),
    ]
    return "\n".join(lines) + "\n", ok


# ----------------------------------------------------------------------------------------------------------------
# train
# ----------------------------------------------------------------------------------------------------------------
def _export(path: Path) -> None:
    if not path.exists():
        load(DATASET).to_hdf5(path)


def _evaluate_official(policy_files: list[Path], episodes: int, eval_seed: int) -> list[dict[str, Any]]:
    from rl.data.references import normalized_score
    from rl.evaluation import evaluate

    rows = []
    for f in policy_files:
        step = int(f.stem.split("_")[1])
        policy = TanhGaussianPolicy(11, 3, (256, 256), log_std_mode="misa")
        policy_from_flax(policy, dict(np.load(f)))
        rets = evaluate(policy, ENV_ID, episodes, seed=eval_seed)
        rows.append(
            {
                "step": step,
                "return_mean": float(rets.mean()),
                "normalized_score": float(normalized_score(DATASET, float(rets.mean()))),
            }
        )
    return rows


def train_curves(args: argparse.Namespace) -> None:
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    data_file = work / f"{DATASET}.hdf5"
    _export(data_file)
    cfg = build_config(CONFIG, {})
    rows: list[dict[str, Any]] = []
    for seed in args.seeds:
        off_dir = work / f"official-seed{seed}"
        last = off_dir / f"policy_{args.steps:07d}.npz"
        if not last.exists():
            t0 = time.time()
            subprocess.run(
                [
                    args.official_python,
                    str(DRIVER),
                    args.official,
                    "train",
                    str(data_file),
                    str(off_dir),
                    "--steps",
                    str(args.steps),
                    "--seed",
                    str(seed),
                    "--eval-every",
                    str(args.eval_every),
                ],
                check=True,
                env={
                    **os.environ,
                    "JAX_PLATFORMS": "cpu",
                    "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1",
                },
            )
            print(f"official seed {seed}: {time.time() - t0:.0f} s", flush=True)
        files = sorted(off_dir.glob("policy_*.npz"))
        for r in _evaluate_official(files, cfg.run.eval_episodes, cfg.run.eval_seed):
            rows.append({"code": "official", "seed": seed, **r})
        run_dir = work / f"ours-seed{seed}"
        if not (run_dir / "eval.csv").exists() or _last_step(run_dir) < args.steps:
            cmd = [
                sys.executable,
                "-m",
                "rl.train",
                "--config",
                str(CONFIG),
                "--dataset",
                str(data_file),
                "--env",
                ENV_ID,
                "--seed",
                str(seed),
                "--steps",
                str(args.steps),
                "--eval-every",
                str(args.eval_every),
                "--run-dir",
                str(run_dir),
                "--threads",
                "1",
                "--quiet",
            ]
            if (run_dir / "checkpoint.pt").exists():
                cmd.append("--resume")
            subprocess.run(cmd, check=True, cwd=ROOT)
        with open(run_dir / "eval.csv") as f:
            for r in csv.DictReader(f):
                rows.append(
                    {
                        "code": "ours",
                        "seed": seed,
                        "step": int(r["step"]),
                        "return_mean": float(r["return_mean"]),
                        "normalized_score": float(r["normalized_score"]),
                    }
                )
    from rl.data.references import behaviour_score

    _write_curves(rows, args, behaviour_score(load(str(data_file)), [DATASET]))


def _last_step(run_dir: Path) -> int:
    with open(run_dir / "eval.csv") as f:
        steps = [int(r["step"]) for r in csv.DictReader(f)]
    return max(steps, default=0)


def report_curves(out: Path) -> int:
    """Rebuild `misa_parity_curves.md` and `.png` from the committed `.csv` (the evaluations) and `.json` (the
    command, the seeds and the behaviour score) in `out`."""
    csv_path, meta_path = out / "misa_parity_curves.csv", out / "misa_parity_curves.json"
    for path in (csv_path, meta_path):
        if not path.is_file():
            print(f"error: {path} is missing (written by `misa_parity.py train`)", file=sys.stderr)
            return 2
    meta = json.loads(meta_path.read_text())
    with open(csv_path) as f:
        rows = [
            {
                "code": r["code"],
                "seed": int(r["seed"]),
                "step": int(r["step"]),
                "return_mean": float(r["return_mean"]),
                "normalized_score": float(r["normalized_score"]),
            }
            for r in csv.DictReader(f)
        ]
    args = argparse.Namespace(out=str(out), command=meta["command"], seeds=meta["seeds"])
    _write_curves(rows, args, float(meta["behaviour"]))
    print(f"wrote {out / 'misa_parity_curves.md'} and .png")
    return 0


def _write_curves(rows: list[dict[str, Any]], args: argparse.Namespace, behaviour: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(args.out)

    atomic_write_csv(
        out / "misa_parity_curves.csv",
        sorted(rows, key=lambda r: (r["code"], r["seed"], r["step"])),
        ["code", "seed", "step", "return_mean", "normalized_score"],
    )
    # what the page says beside the rows: `report` rebuilds the page from these two files alone
    meta = {"command": args.command, "seeds": list(args.seeds), "behaviour": behaviour}
    _write_text(out / "misa_parity_curves.json", json.dumps(meta, indent=1) + "\n")
    steps = sorted({r["step"] for r in rows})
    table = {}
    for code in ("official", "ours"):
        for step in steps:
            vals = [r["normalized_score"] for r in rows if r["code"] == code and r["step"] == step]
            if vals:
                table[(code, step)] = (
                    float(np.mean(vals)),
                    float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0,
                    vals,
                )
    lines = [
        "# MISA learning curves: ours vs the official code",
        "",
        f"Made by `{args.command}`. Same exported hopper-medium-v5 file, official settings on both sides, seeds "
        f"{' '.join(map(str, args.seeds))}; every policy evaluated by our evaluation (Hopper-v5, 10 episodes, "
        "deterministic tanh(mean)). D4RL-normalised score, mean ± sample std over seeds (per-seed values); "
        f"the behaviour data scores {behaviour:.1f}.",
        "",
        "<!-- table:misa-parity -->",  # a named block: benchmarks/docs_tables.py pastes it into docs/results.md
        "| step | official | ours |",
        "|---|---|---|",
    ]
    for step in steps:
        cells = []
        for code in ("official", "ours"):
            if (code, step) in table:
                mu, sd, vals = table[(code, step)]
                cells.append(f"{mu:.1f} ± {sd:.1f} ({', '.join(f'{v:.1f}' for v in vals)})")
            else:
                cells.append("-")
        lines.append(f"| {step} | {cells[0]} | {cells[1]} |")
    lines.append("<!-- /table:misa-parity -->")
    _write_text(out / "misa_parity_curves.md", "\n".join(lines) + "\n")
    fig, ax = plt.subplots(figsize=(6.5, 4.3))
    for code, color in (("official", "tab:blue"), ("ours", "tab:orange")):
        xs = [s for s in steps if (code, s) in table]
        mu = np.array([table[(code, s)][0] for s in xs])
        sd = np.array([table[(code, s)][1] for s in xs])
        ax.plot(xs, mu, color=color, label=f"{code} (mean over {len(args.seeds)} seeds)")
        ax.fill_between(xs, mu - sd, mu + sd, color=color, alpha=0.2)
    ax.axhline(behaviour, color="k", linestyle="--", linewidth=1, label=f"behaviour data ({behaviour:.1f})")
    ax.set_xlabel("gradient steps")
    ax.set_ylabel("normalised score")
    ax.set_title("MISA on hopper-medium-v5: ours vs official")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=3, fontsize=8, frameon=False)
    fig.tight_layout()
    atomic_write(out / "misa_parity_curves.png", lambda tmp: fig.savefig(tmp, format="png", dpi=110))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "mode",
        choices=["update", "train", "report"],
        help="report: rebuild the curves' page and plot from misa_parity_curves.csv/.json in --out, running nothing",
    )
    p.add_argument("--official", help="update/train: path to a checkout of sail-sg/MISA")
    p.add_argument("--official-python", help="update/train: python of the official code's venv")
    p.add_argument("--seed", type=int, default=0, help="update: seed of weights, batch and noise")
    p.add_argument("--warmup", type=int, default=200, help="update: our updates before the second comparison")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="train: seeds of each side")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--eval-every", type=int, default=500)
    p.add_argument(
        "--work", default=str(ROOT / "runs" / "misa-parity"), help="train: run dirs and the HDF5 file"
    )
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args(argv)
    if args.mode == "report":
        return report_curves(Path(args.out))
    if not (args.official and args.official_python):
        p.error(
            f"{args.mode} needs --official and --official-python (the official checkout and its venv's python)"
        )
    # The command as the docs give it: the two machine-specific paths as placeholders.
    shown, hide = [], {"--official": "OFFICIAL_DIR", "--official-python": "OFFICIAL_PYTHON"}
    raw = list(argv if argv is not None else sys.argv[1:])
    for i, a in enumerate(raw):
        shown.append(hide[raw[i - 1]] if i and raw[i - 1] in hide else a)
    args.command = "python benchmarks/misa_parity.py " + " ".join(shown)
    if args.mode == "update":
        results = [compare_update(args, 0), compare_update(args, args.warmup)]
        text, ok = update_report(results, args.command)
        out = Path(args.out)
        _write_text(out / "misa_parity.md", text)
        print(text)
        return 0 if ok else 1
    train_curves(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
