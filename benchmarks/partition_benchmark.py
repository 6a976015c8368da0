"""Partition functions and samplers: accuracy, gradient variance and speed, with closed-form truth.

    python benchmarks/partition_benchmark.py --quick          # a few minutes on 2 CPU cores
    python benchmarks/partition_benchmark.py                  # the numbers in docs/partition.md
    python benchmarks/partition_benchmark.py --sections speed --threads 1

Sections (each writes into `--out`, default `benchmarks/results/`):

* `logz`: Gaussian proposal N(mu_i, s^2 I) per row, critic T(y) = b_i . y (per-row b so that per-row gradients are
  separate), N = 256 rows, d = 3. Truth: log Z_i = b_i.mu_i + s^2|b_i|^2/2, d/db_i = mu_i + s^2 b_i, d/dmu_i = b_i,
  d/dlog s = s^2 b_i^2. Errors (RMSE over rows and coordinates, mean over repeats) of log Z and of its gradient vs the
  number of samples and MCMC steps, for Monte Carlo (SNIS), ULA, MALA, HMC (ours), pyro's HMC and NUTS, with wall
  time. -> `partition_logz.csv`.
* `variance`: bias^2 and variance over repeats of the per-row gradient of log Z wrt (b, mu, log s) at a budget of
  50 samples, for the biased estimator (log-mean-exp of reparameterised samples, `misa-biased`), SNIS Monte Carlo,
  and the MCMC (tilted-sample) estimators; for the linear critic and a quadratic one (T = b.y - a|y|^2/2, also closed
  form). -> `partition_variance.csv`.
* `speed`: RL shapes (256 states, 3-d tanh-Gaussian action, MLP critic 256-256 ELU on [obs(11), action]): one MISA
  chain (5 burn-in + 50 samples, 2 leapfrog steps = 110 gradient evaluations) with our HMC, pyro's HMC, and the bare
  cost of the 110 autograd evaluations alone (the floor for any eager sampler). -> `partition_speed.csv`.
* `staircase`: the MISA family through `mie.estimate` on the MI staircase, by running `benchmarks/staircase.py` with
  the MISA estimators (`--staircase-steps` per level). -> `partition_staircase.{csv,md,png}`.

All sections together make `partition.png` and `partition.md` (the tables quoted in docs/partition.md).
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

import mi_estimators.misa  # noqa: F401  (registers the MISA family)
from mi_estimators.partition import MCMCLogZ, MonteCarloLogZ
from mi_estimators.proposals import DiagGaussian, TanhDiagGaussian
from mi_estimators.samplers import HMC, MALA, ULA, PyroHMC, PyroNUTS, autograd_value_and_grad, sample_tilted

D, N, S_STD = 3, 256, 0.8


# --------------------------------------------------------------------------------------------------------------
# closed form: T(y) = b.y - a |y|^2 / 2 on N(mu, s^2 I), per row
def true_log_z(mu: Tensor, b: Tensor, log_s: Tensor, a: float) -> Tensor:
    """`[N]` exact log E_{N(mu, s^2)} e^{b.y - a|y|^2/2} (float64 inputs keep the truth exact)."""
    s2 = torch.exp(2 * log_s)
    prec = 1 / s2 + a
    per = -mu.square() / (2 * s2) + (mu / s2 + b).square() / (2 * prec) - 0.5 * torch.log(s2 * prec)
    return per.sum(-1)


def truth(mu: Tensor, b: Tensor, log_s: Tensor, a: float) -> tuple[Tensor, dict[str, Tensor]]:
    p = {k: v.detach().double().requires_grad_(True) for k, v in {"b": b, "mu": mu, "log_s": log_s}.items()}
    lz = true_log_z(p["mu"], p["b"], p["log_s"], a)
    grads = torch.autograd.grad(lz.sum(), [p["b"], p["mu"], p["log_s"]])
    return lz.detach(), dict(zip(["b", "mu", "log_s"], grads))


def problem(seed: int, a: float = 0.0):
    g = torch.Generator().manual_seed(1000 + seed)
    mu = torch.randn(N, D, generator=g)
    b = 0.8 * torch.randn(N, D, generator=g)
    log_s = torch.full((N, D), math.log(S_STD))
    return mu, b, log_s, a


def estimate_once(
    method: Callable[..., Any], mu, b, log_s, a, seed: int
) -> tuple[Tensor, dict[str, Tensor], float]:
    """Run one partition estimate; return (log_z [N], grads {b, mu, log_s} [N, D], seconds incl. backward)."""
    p = {k: v.clone().requires_grad_(True) for k, v in {"b": b, "mu": mu, "log_s": log_s}.items()}
    law = DiagGaussian(p["mu"], p["log_s"])

    def critic(y: Tensor) -> Tensor:
        t = (y * p["b"].unsqueeze(1)).sum(-1)
        return t - 0.5 * a * y.square().sum(-1) if a else t

    g = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    est = method(law, critic, g)
    est.log_z.sum().backward()
    seconds = time.perf_counter() - start
    method.last = est  # type: ignore[attr-defined]  (for the acceptance rate)
    return est.log_z.detach(), {k: v.grad for k, v in p.items()}, seconds


def rmse(x: Tensor, y: Tensor) -> float:
    return float((x.double() - y).square().mean().sqrt())


# --------------------------------------------------------------------------------------------------------------
def mcmc_methods(quick: bool) -> list[tuple[str, dict[str, Any], Callable[[int, int], Any]]]:
    """(name, params, factory(n_samples, burn_in) -> partition function)."""
    return [
        ("ula", {"step_size": 0.5}, lambda s, bi: MCMCLogZ(ULA(step_size=0.5), n_samples=s, burn_in=bi, k=s)),
        (
            "mala",
            {"step_size": 1.0},
            lambda s, bi: MCMCLogZ(MALA(step_size=1.0), n_samples=s, burn_in=bi, k=s),
        ),
        (
            "hmc",
            {"step_size": 1.0, "n_leapfrog": 2},
            lambda s, bi: MCMCLogZ(HMC(), n_samples=s, burn_in=bi, k=s),
        ),
        (
            "pyro-hmc",
            {"step_size": 1.0, "n_leapfrog": 2},
            lambda s, bi: MCMCLogZ(PyroHMC(), n_samples=s, burn_in=bi, k=s),
        ),
        ("pyro-nuts", {"step_size": 1.0}, lambda s, bi: MCMCLogZ(PyroNUTS(), n_samples=s, burn_in=bi, k=s)),
    ]


def section_logz(quick: bool, repeats: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    ks = [8, 32, 128, 512] if quick else [8, 32, 128, 512, 2048, 8192]
    budgets = [(10, 5), (50, 5)] if quick else [(10, 5), (50, 5), (50, 20), (200, 20)]
    jobs: list[tuple[str, dict[str, Any], Callable[[], Any], int]] = []
    for k in ks:
        jobs.append(("mc", {"k": k}, lambda k=k: MonteCarloLogZ(k), k))
    for name, _, factory in mcmc_methods(quick):
        for s, bi in budgets:
            if name.startswith("pyro") and s > 50:
                continue  # pyro's per-step Python overhead makes long chains minutes long
            if name == "pyro-nuts" and quick and s > 10:
                continue
            jobs.append(
                (name, {"n_samples": s, "burn_in": bi}, lambda f=factory, s=s, bi=bi: f(s, bi), s + bi)
            )
    for name, params, make, _ in jobs:
        errs: dict[str, list[float]] = {"log_z": [], "b": [], "mu": [], "log_s": []}
        secs, accept = [], []
        for r in range(repeats):
            mu, b, log_s, a = problem(r)
            lz_true, g_true = truth(mu, b, log_s, a)
            part = make()
            lz, grads, sec = estimate_once(part, mu, b, log_s, a, seed=r)
            errs["log_z"].append(rmse(lz, lz_true))
            for key in ("b", "mu", "log_s"):
                errs[key].append(rmse(grads[key], g_true[key]))
            secs.append(sec)
            res = part.last.result if hasattr(part, "last") else None
            if res is not None:
                accept.append(float(res.mean_accept_rate))
        grad_evals = 0 if name == "mc" else params["burn_in"] + params["n_samples"]
        if name in ("hmc", "pyro-hmc"):
            grad_evals *= 2
        row = {
            "method": name,
            **{k: params.get(k, "") for k in ("k", "n_samples", "burn_in")},
            "grad_evals_per_row": grad_evals if name != "pyro-nuts" else "",
            "log_z_rmse": statistics.fmean(errs["log_z"]),
            "grad_b_rmse": statistics.fmean(errs["b"]),
            "grad_mu_rmse": statistics.fmean(errs["mu"]),
            "grad_log_s_rmse": statistics.fmean(errs["log_s"]),
            "seconds": statistics.median(secs),
            "accept_rate": statistics.fmean(accept) if accept else "",
        }
        rows.append(row)
        print(
            f"logz {name:>9} {params}: logZ {row['log_z_rmse']:.4f}  dB {row['grad_b_rmse']:.4f}  "
            f"dmu {row['grad_mu_rmse']:.4f}  dlogs {row['grad_log_s_rmse']:.4f}  {row['seconds'] * 1e3:.0f} ms",
            file=sys.stderr,
        )
    return rows


def section_variance(quick: bool, repeats: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    methods: list[tuple[str, Callable[[], Any]]] = [
        ("biased (reparam log-mean-exp, K=50)", lambda: MonteCarloLogZ(50, grad="reparam")),
        ("SNIS Monte Carlo (K=50)", lambda: MonteCarloLogZ(50, grad="snis")),
        ("MCMC: HMC (50 samples, 5 burn-in)", lambda: MCMCLogZ(HMC(), n_samples=50, burn_in=5)),
        (
            "MCMC: MALA (50 samples, 5 burn-in)",
            lambda: MCMCLogZ(MALA(step_size=1.0), n_samples=50, burn_in=5),
        ),
        (
            "MCMC: ULA h=0.5 (50 samples, 5 burn-in)",
            lambda: MCMCLogZ(ULA(step_size=0.5), n_samples=50, burn_in=5),
        ),
    ]
    for case, a in (("linear", 0.0), ("quadratic a=1", 1.0)):
        mu, b, log_s, _ = problem(0, a)
        _, g_true = truth(mu, b, log_s, a)
        for name, make in methods:
            draws: dict[str, list[Tensor]] = {"b": [], "mu": [], "log_s": []}
            secs = []
            for r in range(repeats):
                _, grads, sec = estimate_once(make(), mu, b, log_s, a, seed=10_000 + r)
                for key in draws:
                    draws[key].append(grads[key].double())
                secs.append(sec)
            row: dict[str, Any] = {"case": case, "estimator": name}
            for key, vals in draws.items():
                stack = torch.stack(vals)  # [R, N, D]
                row[f"{key}_bias2"] = float((stack.mean(0) - g_true[key]).square().mean())
                row[f"{key}_var"] = float(stack.var(0).mean())
            row["seconds"] = statistics.median(secs)
            rows.append(row)
            print(
                f"variance {case:>13} {name:<42} "
                + "  ".join(f"{k}: bias2 {row[f'{k}_bias2']:.2e} var {row[f'{k}_var']:.2e}" for k in draws),
                file=sys.stderr,
            )
    return rows


class _Critic(nn.Module):
    """Hopper-sized Q network: [obs 11, action 3] -> 256 -> 256 -> 1, ELU (the state part computed once)."""

    def __init__(self, obs_dim: int = 11, act_dim: int = 3, hidden: int = 256) -> None:
        super().__init__()
        self.obs_in = nn.Linear(obs_dim, hidden)
        self.act_in = nn.Linear(act_dim, hidden, bias=False)
        self.rest = nn.Sequential(nn.ELU(), nn.Linear(hidden, hidden), nn.ELU(), nn.Linear(hidden, 1))

    def forward(self, obs_h: Tensor, act: Tensor) -> Tensor:
        return self.rest(obs_h + self.act_in(act)).squeeze(-1)


def section_speed(quick: bool, repeats: int) -> list[dict[str, Any]]:
    torch.manual_seed(0)
    n, obs_dim, act_dim = 256, 11, 3
    critic = _Critic(obs_dim, act_dim)
    g = torch.Generator().manual_seed(0)
    obs = torch.randn(n, obs_dim, generator=g)
    law = TanhDiagGaussian(0.3 * torch.randn(n, act_dim, generator=g), torch.full((n, act_dim), -0.5))
    actions = torch.tanh(torch.randn(n, act_dim, generator=g))
    obs_h = critic.obs_in(obs).detach().unsqueeze(1)  # [N, 1, H]: once per state, broadcast over samples

    def q(a: Tensor) -> Tensor:
        return critic(obs_h, a)

    def chain_ours(sampler):
        return lambda: sample_tilted(sampler, law, q, 50, init=actions, generator=g, burn_in=5)

    mean, s = law.mean.unsqueeze(1), torch.exp(law.log_std).unsqueeze(1)

    def bare():
        vg = autograd_value_and_grad(
            lambda z: -0.5 * z.square().sum(-1) + q(law.to_constrained(mean + s * z))
        )
        z = torch.zeros(n, 1, act_dim)
        for _ in range(110):
            vg(z)

    cases: list[tuple[str, Callable[[], Any], int]] = [
        ("bare autograd (110 evaluations, no sampler)", bare, 110),
        ("ours: HMC L=2, 5+50 steps", chain_ours(HMC()), 110),
        ("ours: MALA, 5+50 steps", chain_ours(MALA(step_size=1.0)), 55),
        ("ours: ULA, 5+50 steps", chain_ours(ULA(step_size=0.5)), 55),
        ("pyro: HMC L=2, 5+50 steps", chain_ours(PyroHMC()), 110),
    ]
    rows = []
    for name, fn, evals in cases:
        fn()  # warm-up
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        sec = statistics.median(times)
        rows.append(
            {
                "case": name,
                "grad_evals": evals,
                "ms_per_chain": 1e3 * sec,
                "ms_per_grad_eval": 1e3 * sec / evals,
                "threads": torch.get_num_threads(),
            }
        )
        print(
            f"speed {name:<46} {1e3 * sec:8.1f} ms  ({1e3 * sec / evals:.3f} ms per evaluation)",
            file=sys.stderr,
        )
    return rows


def section_staircase(steps: int, out: Path, threads: int) -> list[dict[str, Any]]:
    sys.path.insert(0, str(Path(__file__).parent))
    import staircase  # the lead's benchmark: same schedule, critics and summaries as the other bounds

    tmp = Path(tempfile.mkdtemp(prefix="partition_staircase_"))
    staircase.main(
        [
            "--estimators", "misa", "misa-biased", "misa-dv", "misa-f",
            "--critics", "concat",
            "--steps-per-level", str(steps),
            "--threads", str(threads),
            "--out", str(tmp),
        ]
    )  # fmt: skip
    for src, dst in (
        ("staircase_summary.csv", "partition_staircase.csv"),
        ("staircase.md", "partition_staircase.md"),
        ("staircase.png", "partition_staircase.png"),
    ):
        _publish(str(tmp / src), out / dst)
    with open(out / "partition_staircase.csv") as f:
        return list(csv.DictReader(f))


# --------------------------------------------------------------------------------------------------------------
def _publish(tmp: str, path: Path) -> None:
    """Atomic replace with ordinary permissions (mkstemp makes 0600 files)."""
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.5g}" if isinstance(v, float) else v) for k, v in r.items()})
    _publish(tmp, path)


def read_csv(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    with open(path) as f:
        return list(csv.DictReader(f))


def plot(out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    logz, var = read_csv(out / "partition_logz.csv"), read_csv(out / "partition_variance.csv")
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    mc = [r for r in logz if r["method"] == "mc"]
    ax = axes[0]
    if mc:
        ax.loglog(
            [int(r["k"]) for r in mc], [float(r["log_z_rmse"]) for r in mc], "o-", label="log Z (Monte Carlo)"
        )
        ax.loglog(
            [int(r["k"]) for r in mc], [float(r["grad_b_rmse"]) for r in mc], "s--", label="d/db (SNIS)"
        )
        ax.loglog(
            [int(r["k"]) for r in mc],
            [float(r["grad_log_s_rmse"]) for r in mc],
            "^--",
            label="d/dlog s (SNIS)",
        )
    ax.set_xlabel("proposal samples K per row")
    ax.set_ylabel("RMSE vs closed form")
    ax.set_title("Monte Carlo log Z and its SNIS gradient")
    ax.legend(fontsize=8)
    ax = axes[1]
    colors = {"mc": "black", "ula": "tab:green", "mala": "tab:orange", "hmc": "tab:blue", "pyro-hmc": "tab:purple",
              "pyro-nuts": "tab:red"}  # fmt: skip
    for method, color in colors.items():
        rs = [r for r in logz if r["method"] == method]
        if rs:
            ax.loglog(
                [1e3 * float(r["seconds"]) for r in rs], [float(r["grad_log_s_rmse"]) for r in rs], "o-",
                color=color, label=method,
            )  # fmt: skip
            for r in rs:
                lab = f"K={r['k']}" if method == "mc" else f"{r['n_samples']}/{r['burn_in']}"
                ax.annotate(lab, (1e3 * float(r["seconds"]), float(r["grad_log_s_rmse"])), fontsize=6)
    ax.set_xlabel("wall time per estimate incl. backward (ms), 256 rows")
    ax.set_ylabel("RMSE of d log Z / d log s")
    ax.set_title("gradient error vs time (labels: samples/burn-in)")
    ax.legend(fontsize=8)
    ax = axes[2]
    cases = [r for r in var if r["case"] == "quadratic a=1"]
    if cases:
        names = [r["estimator"].split(" (")[0] for r in cases]
        x = range(len(cases))
        ax.bar([i - 0.2 for i in x], [float(r["mu_var"]) for r in cases], 0.4, label="variance (d/dmu)")
        ax.bar([i + 0.2 for i in x], [float(r["mu_bias2"]) for r in cases], 0.4, label="bias^2 (d/dmu)")
        ax.set_xticks(list(x))
        ax.set_xticklabels(names, rotation=20, fontsize=7, ha="right")
        ax.set_yscale("log")
        ax.set_title("d log Z / d mu at 50 samples, quadratic critic")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fd, tmp = tempfile.mkstemp(dir=out, prefix=".partition.", suffix=".png")
    os.close(fd)
    fig.savefig(tmp, dpi=110)
    _publish(tmp, out / "partition.png")


def markdown(out: Path, meta: str) -> None:
    logz = read_csv(out / "partition_logz.csv")
    var = read_csv(out / "partition_variance.csv")
    speed = read_csv(out / "partition_speed.csv")
    md = [f"# Partition-function benchmark\n\n{meta}\n"]
    if logz:
        md += [
            "## log Z and its gradient, linear-Gaussian (N=256 rows, d=3, s=0.8), RMSE vs closed form\n",
            "| method | K | samples | burn-in | grad evals/row | log Z | d/db | d/dmu | d/dlog s | ms |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in logz:
            md.append(
                f"| {r['method']} | {r['k']} | {r['n_samples']} | {r['burn_in']} | {r['grad_evals_per_row']} | "
                f"{float(r['log_z_rmse']):.4f} | {float(r['grad_b_rmse']):.4f} | {float(r['grad_mu_rmse']):.4f} | "
                f"{float(r['grad_log_s_rmse']):.4f} | {1e3 * float(r['seconds']):.0f} |"
            )
        md.append("")
    if var:
        md += [
            "## Gradient bias^2 and variance over repeats (per row, mean over rows and coordinates)\n",
            "| case | estimator | d/db bias^2 | d/db var | d/dmu bias^2 | d/dmu var | d/dlog s bias^2 | d/dlog s var | ms |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in var:
            md.append(
                f"| {r['case']} | {r['estimator']} | "
                + " | ".join(
                    f"{float(r[f'{k}_{m}']):.2e}" for k in ("b", "mu", "log_s") for m in ("bias2", "var")
                )
                + f" | {1e3 * float(r['seconds']):.0f} |"
            )
        md.append("")
    if speed:
        md += [
            "## One MISA chain at RL shapes (256 states, 3-d action, MLP critic 256-256), wall time\n",
            "| case | gradient evaluations | ms per chain | ms per evaluation |",
            "|---|---|---|---|",
        ]
        for r in speed:
            md.append(
                f"| {r['case']} | {r['grad_evals']} | {float(r['ms_per_chain']):.1f} | "
                f"{float(r['ms_per_grad_eval']):.3f} |"
            )
        md.append("")
    stair = out / "partition_staircase.md"
    if stair.exists():
        md += ["## MISA family on the MI staircase\n", stair.read_text()]
    fd, tmp = tempfile.mkstemp(dir=out, prefix=".partition.", suffix=".md")
    with os.fdopen(fd, "w") as f:
        f.write("\n".join(md) + "\n")
    _publish(tmp, out / "partition.md")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sections", nargs="+", default=["logz", "variance", "speed", "staircase"],
                        choices=["logz", "variance", "speed", "staircase"])  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="small budgets: a smoke run of every section")
    parser.add_argument("--repeats", type=int, default=None, help="repeats per setting (default 3, quick 2)")
    parser.add_argument("--var-repeats", type=int, default=None, help="repeats for the variance (default 40)")
    parser.add_argument(
        "--staircase-steps", type=int, default=None, help="steps per staircase level (default 500)"
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    repeats = args.repeats or (2 if args.quick else 3)
    var_repeats = args.var_repeats or (8 if args.quick else 40)
    stair_steps = args.staircase_steps or (60 if args.quick else 500)
    if "logz" in args.sections:
        write_csv(args.out / "partition_logz.csv", section_logz(args.quick, repeats))
    if "variance" in args.sections:
        write_csv(args.out / "partition_variance.csv", section_variance(args.quick, var_repeats))
    if "speed" in args.sections:
        write_csv(args.out / "partition_speed.csv", section_speed(args.quick, 3 if args.quick else 7))
    if "staircase" in args.sections:
        section_staircase(stair_steps, args.out, args.threads)
    meta = (
        f"`python benchmarks/partition_benchmark.py{' --quick' if args.quick else ''}`: torch {torch.__version__}, "
        f"{args.threads} thread(s), {os.cpu_count()} CPU cores (shared), repeats {repeats}, variance repeats "
        f"{var_repeats}, staircase {stair_steps} steps/level."
    )
    plot(args.out)
    markdown(args.out, meta)
    print(f"wrote {args.out}/partition*.csv, partition.png, partition.md", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
