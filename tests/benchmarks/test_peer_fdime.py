"""benchmarks/peer_fdime.py: the driver of f-DIME's own code (run here against a stand-in with f-DIME's interface:
`classes.fDIME`, `classes.sample_distribution`, `classes.sample_correlated_gaussian`), the metric both sides share,
and the report's verdict."""

from __future__ import annotations

import csv
import math
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))

import peer_fdime  # noqa: E402

#: f-DIME's interface, as its train() uses it: sample through the module's `sample_distribution`, one estimate per
#: step. The stand-in's estimate is the batch's mean of x² (1 for a standard Gaussian x, 15 for a cubed one) and
#: it records what the driver asked of it.
FAKE_CLASSES = """
import json, os, torch

def sample_correlated_gaussian(rho=0.5, dim=20, batch_size=128, mode="gauss", device="cpu"):
    x, eps = torch.chunk(torch.randn(batch_size, 2 * dim), 2, dim=1)
    return x, rho * x + (1 - rho**2) ** 0.5 * eps

def sample_distribution(*args, **kwargs):
    raise AssertionError("the driver must replace sample_distribution")

class fDIME:
    def __init__(self, proc_params, divergence, architecture, mode):
        self.p, self.calls = proc_params, [(divergence, architecture, mode)]
    def update_SNR_or_rho(self, level):
        self.rho = (1 - torch.exp(torch.tensor(-2.0 * level / self.p["latent_dim"]))).sqrt().item()
    def train(self, epochs, batch_size=40, random_seed=0, verbose=True):
        torch.manual_seed(random_seed)
        out = []
        for _ in range(epochs):
            x, y = sample_distribution(self.p["rho_gauss_corr"], latent_dim=self.p["latent_dim"], rho=self.rho,
                                       batch_size=batch_size, mode="gauss")
            assert x.shape == (batch_size, self.p["latent_dim"]) == y.shape
            out.append(torch.mean(x**2))
        self.calls.append((epochs, batch_size, random_seed, verbose, self.rho))
        with open(os.environ.get("FAKE_LOG", os.devnull), "a") as f:
            f.write(json.dumps(self.calls[-1]) + "\\n")
        return out
"""


@pytest.fixture()
def fake_fdime(tmp_path: Path) -> Path:
    d = tmp_path / "fDIME"
    d.mkdir()
    (d / "classes.py").write_text(FAKE_CLASSES)
    return d


def test_driver_runs_both_sides_on_the_same_law(fake_fdime, tmp_path, monkeypatch):
    out = tmp_path / "out"
    args = [
        "--fdime",
        str(fake_fdime),
        "--peer-python",
        sys.executable,
        "--seeds",
        "0",
        "--steps-per-level",
        "8",
    ]
    args += ["--tasks", "gauss-d5", "gauss-cubic-d5", "--out", str(out)]
    assert peer_fdime.main(args) == 0
    rows = list(csv.DictReader((out / "fdime.csv").open()))
    assert {(r["library"], r["estimator"], r["task"]) for r in rows} == {
        (lib, est, task)
        for lib, est in (("ours", "gan-dime"), ("f-DIME", "gan-deranged"))
        for task in ("gauss-d5", "gauss-cubic-d5")
    }
    assert all(
        len([r for r in rows if (r["library"], r["task"]) == k]) == 5
        for k in {(r["library"], r["task"]) for r in rows}
    )
    # the stand-in reports E[x²] over the level's second half: 1 for Gaussian x, 15 for cubed x (x cubed too)
    for r in rows:
        if r["library"] == "f-DIME":
            second_moment = float(r["bias"]) + float(r["true_mi"])
            assert (5.0 < second_moment) if "cubic" in r["task"] else (0.6 < second_moment < 1.4), r
    md = (out / "fdime.md").read_text()
    assert md.startswith("<!-- regenerate: python benchmarks/peer_fdime.py --fdime ")
    assert "| `gauss-d5` | ours | `gan-dime` |" in md and "## `gauss-cubic-d5`" in md
    # --report-only rebuilds the same page from the CSV alone
    before = md
    assert peer_fdime.main(["--report-only", "--out", str(out)]) == 0
    assert (out / "fdime.md").read_text() == before


def test_peer_worker_follows_fdime_protocol(fake_fdime, tmp_path, monkeypatch):
    """Five levels in order (rho from the level and the dim), `spl` epochs of `batch` each, f-DIME's reseeding with
    the trial seed at every level, no progress printing."""
    log = tmp_path / "calls.jsonl"
    monkeypatch.setenv("FAKE_LOG", str(log))
    monkeypatch.delitem(sys.modules, "classes", raising=False)
    monkeypatch.setattr(sys, "path", list(sys.path))
    peer_fdime._peer_worker(str(fake_fdime), "gauss-d20", 3, 16, 7, str(tmp_path / "e.json"))
    import json

    calls = [json.loads(line) for line in log.read_text().splitlines()]
    rhos = [math.sqrt(1 - math.exp(-2 * mi / 20)) for mi in peer_fdime.LEVELS]
    assert [c[:4] for c in calls] == [[3, 16, 7, False]] * 5
    assert [c[4] for c in calls] == pytest.approx(rhos)
    assert len(json.loads((tmp_path / "e.json").read_text())["estimates"]) == 15
    monkeypatch.delitem(sys.modules, "classes", raising=False)


def test_verdict_is_the_worst_level_ratio():
    rows = []
    for lib, est, mses in (
        ("f-DIME", "gan-deranged", [0.1, 0.2, 0.3, 0.4, 0.5]),
        ("ours", "a", [0.05, 0.1, 0.15, 0.2, 0.25]),
        ("ours", "b", [0.05, 0.1, 0.15, 0.8, 0.25]),
    ):
        for seed in (0, 1):
            for mi, mse in zip(peer_fdime.LEVELS, mses):
                rows.append(
                    {"library": lib, "estimator": est, "task": "gauss-d5", "seed": seed, "true_mi": mi}
                    | {"bias": 0.0, "variance": mse, "mse": mse, "nonfinite": 0, "seconds": 1.0}
                )
    md = peer_fdime.markdown(rows, "cmd")
    summary = md.split("<!-- table:fdime -->\n")[1].split("<!-- /table:fdime -->")[0]
    rows_of = {ln.split(" | ")[2]: ln for ln in summary.splitlines() if ln.startswith("| `gauss-d5` |")}
    # the worst level's ratio: a is half f-DIME's everywhere; b is 0.8 / 0.4 at 8 nats
    assert rows_of["`a`"].endswith("| 0.50 |") and rows_of["`b`"].endswith("| 2.00 |")
    assert rows_of["`gan-deranged` (its code)"].endswith("| 0.500 ± 0.000 |  |")  # f-DIME has no ratio
    assert list(rows_of) == ["`gan-deranged` (its code)", "`a`", "`b`"]  # f-DIME first
    assert "| ours | `a` | 0.050 ± 0.000 | 0.100 ± 0.000 |" in md  # the per-task tables


def test_bad_arguments_are_named(tmp_path, capsys):
    with pytest.raises(SystemExit):
        peer_fdime.main(["--seeds", "0"])
    assert "--fdime and --peer-python are required" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        peer_fdime.main(["--fdime", str(tmp_path), "--peer-python", sys.executable])
    assert "no classes.py there" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        peer_fdime.main(["--no-peer", "--ours", "gan-dimex"])
    assert "--ours 'gan-dimex': neither a registered estimator nor a recipe" in capsys.readouterr().err


def test_screen_ratios_a_sweep_against_fdime(tmp_path):
    import json

    rows = [
        {"library": "f-DIME", "estimator": "gan-deranged", "task": "gauss-d5", "seed": s, "true_mi": mi}
        | {"bias": 0.0, "variance": 0.1, "mse": 0.1 * (s + 1), "nonfinite": 0, "seconds": 1.0}
        for s in (0, 1)
        for mi in peer_fdime.LEVELS
    ]  # f-DIME's mean MSE: 0.15 at every level
    for name, critic, mses in (
        ("a", "hybrid", [0.15, 0.075, 0.1, 0.1, 0.3]),
        ("b", "concat", [0.1, 0.1, float("nan"), 0.1, 0.1]),
    ):
        d = tmp_path / "sweep" / "runs" / f"{name}__gauss-d5__{critic}__s0"
        d.mkdir(parents=True)
        levels = [{"mi": mi, "mse": m} for mi, m in zip(peer_fdime.LEVELS, mses)]
        (d / "result.json").write_text(
            json.dumps(
                {"params": {"estimator": name, "critic": critic, "task": "gauss-d5"}, "levels": levels}
            )
        )
    md = peer_fdime.screen(rows, tmp_path / "sweep", "cmd")
    assert "| a | hybrid | 2.00 |" in md and "| b | concat | ∞ (non-finite) |" in md
    assert md.splitlines()[1] == "<!-- table:search -->" and md.rstrip().endswith("<!-- /table:search -->")
