"""Quick start: `python -m mi_estimators [--estimators recommended nwj infonce smile] [--dim 5] [--mi 2]`.

Trains a critic with each estimator on a correlated Gaussian with known MI and prints estimate vs truth.
`recommended` is `mie.RECOMMENDED` (its own critic, averaging and clipping, Adam at `estimate`'s default lr); the
others use `--critic` and lr 1e-3.
"""

from __future__ import annotations

import argparse
import time

import torch

from . import RECOMMENDED, available, estimate
from .tasks import CorrelatedGaussian


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mi_estimators", description=__doc__)
    parser.add_argument(
        "--estimators",
        nargs="+",
        default=["recommended", "nwj", "infonce", "smile"],
        choices=["recommended", *available()],
    )
    parser.add_argument("--dim", type=int, default=5)
    parser.add_argument("--mi", type=float, default=2.0, help="true MI in nats")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument(
        "--critic", default="separable", choices=["separable", "concat", "hybrid", "bilinear"]
    )
    parser.add_argument("--seed", type=int, default=0)
    # One thread: the tensors are small, so each parallel op would pay more in synchronisation than it saves
    # (and several threads crawl when another job shares the cores).
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error(f"--threads must be >= 1; got {args.threads}")
    torch.set_num_threads(args.threads)
    task = CorrelatedGaussian(dim=args.dim, mi=args.mi)
    print(f"CorrelatedGaussian(dim={args.dim}, mi={args.mi}) - {args.steps} steps, batch {args.batch_size}")
    print(f"{'estimator':<14}{'estimate (nats)':>16}{'error':>10}{'seconds':>10}")
    for name in args.estimators:
        start = time.perf_counter()
        settings = (
            dict(RECOMMENDED)
            if name == "recommended"
            else {"estimator": name, "critic": args.critic, "lr": 1e-3}
        )
        hist = estimate(task=task, steps=args.steps, batch_size=args.batch_size, seed=args.seed, **settings)
        mi_hat = hist.final(window=max(1, args.steps // 10))
        print(f"{name:<14}{mi_hat:>16.3f}{mi_hat - args.mi:>+10.3f}{time.perf_counter() - start:>10.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
