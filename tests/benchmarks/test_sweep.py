"""The sweep runner (`rl.sweep`; `benchmarks/sweep.py` is its alias): spec validation, trial ids, gathering and the
tables on hand-written run folders, a trial's exact resume after a simulated kill, and end-to-end local Ray sweeps
(a tiny BC/TD3+BC grid on a hand-made 400-transition Hopper file; the rerun after a kill skips finished trials and
resumes the interrupted one).
The estimator suite (kind staircase): the task axis, held-out estimates per level, the report's tables, and
bit-identical reruns.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import shutil
import statistics
import sys
from pathlib import Path

import pytest
import torch
from conftest import assert_same_state

import rl.sweep.staircase as sc
from rl._safe_load import load_torch_file
from rl.config import to_dict
from rl.sweep import plots
from rl.sweep.__main__ import main
from rl.sweep.driver import SweepError, run_sweep
from rl.sweep.folders import RESULT, read_evals, run_dir, trial_config, trial_status
from rl.sweep.gather import gather
from rl.sweep.report import carry_files, publish, write_report
from rl.sweep.spec import SpecError, load_spec
from rl.sweep.trials import pack, run_trial
from rl.train import Trainer

REPO = Path(__file__).resolve().parents[2]
SPECS = REPO / "benchmarks" / "sweeps"
REDUCED_TRIALS = 11 * 5 * 2 * 3  # the full grid at 1000 steps per level
TINY_NETS = "batch_size: 32, hidden_q: [16, 16], hidden_pi: [16, 16], log_every: 25"


# ------------------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------------------
def write_spec(tmp: Path, text: str, name: str = "spec.yaml") -> Path:
    p = tmp / name
    p.write_text(text)
    return p


def tiny_rl_spec(tmp: Path, dataset: Path, name: str = "tiny") -> Path:
    return write_spec(
        tmp,
        f"""
name: {name}
kind: rl
base: {{steps: 50, eval_every: 25, eval_episodes: 1, checkpoint_every: 25, dataset: {dataset}, {TINY_NETS}}}
grid:
  variant:
    - {{name: bc, config: configs/bc/hopper-medium-v5.yaml}}
    - {{name: td3bc, config: configs/td3bc/hopper-medium-v5.yaml}}
  seed: [0, 1]
""",
        f"{name}.yaml",
    )


def snapshot(d: Path) -> dict[str, tuple[int, str]]:
    """Every file under `d`: (mtime_ns, sha256)."""
    return {
        str(p.relative_to(d)): (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
        for p in sorted(d.rglob("*"))
        if p.is_file()
    }


def agent_state(run: Path) -> dict:
    return load_torch_file(run / "checkpoint.pt")["agent"]


def read_table(path: Path) -> list[dict[str, str]]:
    lines = path.read_text().splitlines()
    assert lines[0].startswith("# regenerate: python benchmarks/sweep.py ")
    return list(csv.DictReader(lines[1:]))


# ------------------------------------------------------------------------------------------------------------
# specs and trial ids
# ------------------------------------------------------------------------------------------------------------
RL_OK = """
name: ok
kind: rl
base: {steps: 10}
grid:
  variant:
    - {name: bc, config: configs/bc/hopper-medium-v5.yaml}
  seed: [0]
"""


@pytest.mark.parametrize(
    ("text", "match"),
    [
        (RL_OK + "grids: {}\n", r"unknown key 'grids'"),
        (RL_OK.replace("kind: rl", "kind: ppo"), r"kind must be one of rl, staircase; got 'ppo'"),
        (RL_OK.replace("name: ok", "name: two words"), r"^name must be"),
        (RL_OK.replace("kind: rl\n", ""), r"missing key 'kind'"),
        (RL_OK.replace("seed: [0]", "seeds: [0]"), r"grid: unknown axis 'seeds'"),
        (RL_OK.replace("seed: [0]", "seed: [0, one]"), r"grid\.seed\[1\] must be an integer; got 'one'"),
        (RL_OK.replace("{name: bc, ", "{"), r"grid\.variant\[0\]\.name must be"),
        (
            RL_OK.replace("bc/hopper", "bx/hopper"),
            r"grid\.variant\[0\] \(bc\)\.config: config file not found",
        ),
        (RL_OK.replace("steps: 10", "stepz: 10"), r"grid\.variant\[0\] \(bc\): unknown option --stepz"),
        (RL_OK.replace("steps: 10", "steps: many"), r"steps must be an integer; got 'many'"),
        (RL_OK.replace("steps: 10", "run_dir: x"), r"base\.run_dir: 'run_dir' is set by the sweep"),
        (RL_OK.replace("}\n  seed", ", seed: 3}\n  seed"), r"grid\.variant\[0\] \(bc\)\.seed: 'seed' is set"),
        (
            RL_OK.replace("  seed:", "    - {name: bc, algo: iql}\n  seed:"),
            r"grid\.variant: two variants are named 'bc'",
        ),
        (RL_OK + "resources: {cpu: 0}\n", r"resources\.cpu must be a positive number"),
        (RL_OK + "resources: {cpus: 2}\n", r"resources: unknown key 'cpus'"),
        (
            RL_OK.replace("base: {steps: 10}", "base: {dataset: x}") + "  dataset: [hopper-medium-v5]\n",
            r"base\.dataset: the grid has a dataset axis",
        ),
        (
            "name: s\nkind: staircase\ngrid: {estimator: [nwj, nwx], seed: [0]}\n",
            r"grid\.estimator\[1\]: unknown estimator 'nwx'",
        ),
        (
            "name: s\nkind: staircase\nbase: {steps: 3}\ngrid: {estimator: [nwj], seed: [0]}\n",
            r"base: unknown key 'steps' for kind staircase",
        ),
        (
            "name: s\nkind: staircase\ngrid: {estimator: [nwj], critic: [mlp], seed: [0]}\n",
            r"grid\.critic\[0\]: unknown critic 'mlp'",
        ),
        ("name: s\nkind: staircase\ngrid: {estimator: [nwj]}\n", r"grid: missing axis 'seed'"),
        (
            "name: s\nkind: staircase\ngrid: {estimator: [nwj], task: [gauss-d5, gaus-d5], seed: [0]}\n",
            r"grid\.task\[1\]: task name 'gaus-d5' is not <base>\[-<transform>\]-d<dim>",
        ),
        (
            "name: s\nkind: staircase\ngrid: {estimator: [nwj], task: [gauss-twist-d5], seed: [0]}\n",
            r"grid\.task\[0\]: unknown transform 'twist'",
        ),
        (
            "name: s\nkind: staircase\ngrid: {estimator: [nwj], task: [{dim: 5, df: 3}], seed: [0]}\n",
            r"grid\.task\[0\]: df applies to base student_t only",
        ),
        (
            "name: s\nkind: staircase\ngrid: {estimator: [nwj], task: [{dim: 5, dimm: 3}], seed: [0]}\n",
            r"grid\.task\[0\]: unknown key 'dimm'",
        ),
        (
            "name: s\nkind: staircase\ngrid: {estimator: [nwj], task: [student-t0.1-d20], seed: [0]}\n",
            r"grid\.task\[0\]: a Student-t task with df=0.1 and dim=20 has MI >= 3\.408 nats",
        ),
        (
            "name: s\nkind: staircase\ngrid: {estimator: [nwj], task: [gauss-d5, {name: gauss-d5, dim: 4}], "
            "seed: [0]}\n",
            r"grid\.task: two tasks are named 'gauss-d5'",
        ),
        (
            "name: s\nkind: staircase\ngrid: {estimator: [nwj], task: [gauss-d5], dim: [5], seed: [0]}\n",
            r"grid\.dim: the grid has a task axis; give each task its dim",
        ),
        (
            "name: s\nkind: staircase\nbase: {dim: 5}\ngrid: {estimator: [nwj], task: [gauss-d5], seed: [0]}\n",
            r"base\.dim: the grid has a task axis",
        ),
        (
            "name: s\nkind: staircase\nbase: {heldout_samples: 10}\ngrid: {estimator: [nwj], seed: [0]}\n",
            r"base\.heldout_samples must be 0 \(no held-out estimate\) or at least one batch \(batch_size 64\)",
        ),
        ("- a list\n", r"must be a mapping"),
        *(
            (
                "name: s\nkind: staircase\ngrid: {estimator: [nwj, " + entry + "], seed: [0]}\n",
                match,
            )
            for entry, match in (
                (
                    "{name: a, estimator: nwj, lrr: 1}",
                    r"grid\.estimator\[1\]: unknown key 'lrr'; known keys: name,",
                ),
                ("{estimator: nwj}", r"grid\.estimator\[1\]\.name must be a string; got None"),
                ("{name: a}", r"grid\.estimator\[1\]\.estimator must be a string"),
                ("{name: a/b, estimator: nwj}", r"grid\.estimator\[1\]\.name must be letters, digits"),
                ("{name: a, estimator: nwx}", r"grid\.estimator\[1\]\.estimator: unknown estimator 'nwx'"),
                (
                    "{name: a, estimator: smile, options: {tau: -1}}",
                    r"\[1\]\.options: .*tau must be a positive",
                ),
                (
                    "{name: a, estimator: smile, options: [1]}",
                    r"grid\.estimator\[1\]\.options must be a mapping",
                ),
                (
                    "{name: a, estimator: nwj, critic_options: {widthx: 3}}",
                    r"\[1\]\.critic_options \(critic 'separable'\): .*widthx",
                ),
                (
                    "{name: a, estimator: nwj, lr: -1.0e-3}",
                    r"grid\.estimator\[1\]\.lr must be a positive number",
                ),
                (
                    "{name: a, estimator: nwj, lr: fast}",
                    r"grid\.estimator\[1\]\.lr must be a positive number",
                ),
                ("{name: a, estimator: nwj, negatives: some}", r"\[1\]\.negatives: all-pairs or derangement"),
                (
                    "{name: a, estimator: misa, negatives: derangement}",
                    r"\[1\]\.negatives: a proposal-based estimator draws its own",
                ),
                ("{name: nwj, estimator: smile}", r"grid\.estimator\[1\]: a second estimator named 'nwj'"),
                (
                    "{name: a, estimator: nwj, critics: [concat]}",
                    r"grid\.estimator\[1\]\.critics\[0\]: 'concat' is not a critic of grid\.critic \(separable\)",
                ),
            )
        ),
    ],
)
def test_spec_errors_name_the_key(tmp_path, text, match):
    with pytest.raises(SpecError, match=match):
        load_spec(write_spec(tmp_path, text))


def test_cli_reports_a_bad_spec_with_exit_status_2(tmp_path, capsys):
    path = write_spec(tmp_path, RL_OK.replace("steps: 10", "stepz: 10"))
    assert main([str(path), "--out", str(tmp_path / "out")]) == 2
    assert "--stepz" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_shipped_specs_and_stable_unique_trial_ids(tmp_path):
    spec = load_spec(SPECS / "hopper-medium-50k.yaml")
    ids = [t["id"] for t in spec.trials]
    assert len(ids) == len(set(ids)) == 11 * 3
    assert ids[:3] == ["bc__hopper-medium-v5__s0", "bc__hopper-medium-v5__s1", "bc__hopper-medium-v5__s2"]
    assert "infonce-n10__hopper-medium-v5__s2" in ids
    assert [t["id"] for t in load_spec(SPECS / "hopper-medium-50k.yaml").trials] == ids  # stable
    cfg = trial_config(spec.trial("nwj-n10__hopper-medium-v5__s1"), tmp_path)
    assert (
        cfg.algo,
        cfg.agent.estimator,
        cfg.run.seed,
        cfg.run.steps,
        cfg.run.eval_every,
        cfg.run.eval_episodes,
        cfg.run.threads,
    ) == (
        "mi",
        "nwj",
        1,
        50_000,
        5000,
        10,
        1,
    )
    assert cfg.agent.n_negatives == 10
    assert cfg.run.run_dir == str(tmp_path.resolve() / "runs" / "nwj-n10__hopper-medium-v5__s1")
    misa = trial_config(spec.trial("misa-n10-s10__hopper-medium-v5__s0"), tmp_path)
    assert (misa.agent.estimator, misa.agent.n_negatives, misa.agent.estimator_options) == (
        "misa",
        10,
        {"n_samples": 10},
    )
    assert trial_config(spec.trial("iql__hopper-medium-v5__s2"), tmp_path).algo == "iql"
    for name, n in (
        ("smoke", 4),
        ("staircase-smoke", 4),
        ("estimators", 11 * 5 * 2 * 3 + 5 * 3),
        ("estimators-reduced", REDUCED_TRIALS),
        ("estimators-smoke", 8),
        ("misa-cost", 4),
        ("estimator-search", 63),
        ("heavy-tails", 6),
        ("locomotion-10k", 108),
        ("locomotion-1m", 297),
    ):
        assert len(load_spec(SPECS / f"{name}.yaml").trials) == n
    st = load_spec(SPECS / "staircase-smoke.yaml")
    assert [t["id"] for t in st.trials][:2] == ["nwj__separable__d20__s0", "nwj__separable__d20__s1"]
    assert st.trials[0]["settings"]["task"] == {
        "name": "gauss-d20",
        "base": "gaussian",
        "dim": 20,
        "transform": None,
        "df": None,
    }
    full = load_spec(SPECS / "estimators.yaml")
    s = full.trials[0]["settings"]
    assert (s["steps_per_level"], s["batch_size"], s["heldout_samples"], s["threads"]) == (4000, 64, 4096, 1)
    assert {t["params"]["estimator"] for t in full.trials} >= {
        *("dv", "mine", "nwj", "infonce", "js", "tuba", "smile", "interpolated"),
        *("kl-dime", "gan-dime", "hd-dime"),
    }
    assert {t["params"]["critic"] for t in full.trials} == {"separable", "concat", "hybrid"}
    hybrid = [t for t in full.trials if t["params"]["critic"] == "hybrid"]
    assert {t["params"]["estimator"] for t in hybrid} == {"recommended"}
    recipe = hybrid[0]["settings"]["recipe"]
    import mi_estimators as mie

    assert {k: recipe[k] for k in ("estimator", "average", "max_grad_norm")} == {
        k: v for k, v in mie.RECOMMENDED.items() if k != "critic"
    }
    assert mie.RECOMMENDED["critic"] == "hybrid"
    # the heavy-tail probe: the grid's recommended Student-t trials (same recipe, protocol, task, seeds) with
    # each half of the hybrid critic alone
    probe = load_spec(SPECS / "heavy-tails.yaml").trials
    assert {t["params"]["critic"] for t in probe} == {"concat", "separable"}
    for t in probe:
        grid_twin = full.trial(f"recommended__student-t3-d5__hybrid__s{t['params']['seed']}")
        assert t["settings"] == grid_twin["settings"]
    assert {t["params"]["seed"] for t in full.trials} == {0, 1, 2}
    tasks = {t["params"]["task"]: t["settings"]["task"] for t in full.trials}
    assert tasks["student-t3-d5"] == {
        "name": "student-t3-d5",
        "base": "student_t",
        "dim": 5,
        "transform": None,
        "df": 3.0,
    }
    assert {(v["base"], v["dim"], v["transform"]) for v in tasks.values()} == {
        ("gaussian", 5, None),
        ("gaussian", 20, None),
        ("gaussian", 5, "cubic"),
        ("gaussian", 5, "asinh"),
        ("student_t", 5, None),
    }


def test_a_gpu_share_puts_trials_on_cuda_and_cuda_needs_one(tmp_path):
    shared = RL_OK.replace("base: {steps: 10}", "base: {steps: 10}\nresources: {cpu: 1, gpu: 0.25}")
    spec = load_spec(write_spec(tmp_path, shared))
    assert spec.resources == {"cpu": 1, "gpu": 0.25}
    (trial,) = spec.trials
    assert trial["overrides"]["device"] == "cuda" and trial_config(trial, tmp_path).run.device == "cuda"
    # a variant may still name its device; one that names cuda without a GPU share is refused before Ray starts
    own = load_spec(
        write_spec(tmp_path, shared.replace("base: {steps: 10}", "base: {steps: 10, device: cpu}"))
    )
    assert own.trials[0]["overrides"]["device"] == "cpu"
    with pytest.raises(SpecError, match=r"grid\.variant\[0\] \(bc\): device 'cuda' needs resources\.gpu > 0"):
        load_spec(write_spec(tmp_path, RL_OK.replace("base: {steps: 10}", "base: {steps: 10, device: cuda}")))
    stair = "name: s\nkind: staircase\nresources: {gpu: 0.5}\ngrid: {estimator: [nwj], seed: [0, 1]}\n"
    trials = load_spec(write_spec(tmp_path, stair)).trials
    assert [t["device"] for t in trials] == ["cuda", "cuda"] and "device" not in trials[0]["settings"]
    assert pack(trials)[0]["members"][0]["device"] == "cuda"


def test_dataset_axis_and_nested_overrides(tmp_path):
    path = write_spec(
        tmp_path,
        """
name: axes
kind: rl
base: {steps: 100, lr_q: 1e-4}
grid:
  variant:
    - {name: misa-small, config: configs/misa/hopper-medium-v5.yaml, n_negatives: 10,
       estimator_options.n_samples: 10}
    - {name: bc, algo: bc, hidden-pi: [64, 64]}
  dataset: [hopper-medium-v5, walker2d-medium-replay-v5, /data/d4rl/halfcheetah-medium-v2.hdf5]
  seed: [3]
""",
    )
    spec = load_spec(path)
    ids = [t["id"] for t in spec.trials]
    assert ids == [
        "misa-small__hopper-medium-v5__s3",
        "misa-small__walker2d-medium-replay-v5__s3",
        "misa-small__halfcheetah-medium-v2__s3",
        "bc__hopper-medium-v5__s3",
        "bc__walker2d-medium-replay-v5__s3",
        "bc__halfcheetah-medium-v2__s3",
    ]
    cfg = trial_config(spec.trial("misa-small__walker2d-medium-replay-v5__s3"), tmp_path)
    assert (
        cfg.run.dataset,
        cfg.agent.n_negatives,
        cfg.agent.estimator_options,
        cfg.agent.lr_q,
        cfg.run.seed,
    ) == (
        "walker2d-medium-replay-v5",
        10,
        {"n_samples": 10},
        1e-4,
        3,
    )
    bc = trial_config(spec.trial("bc__halfcheetah-medium-v2__s3"), tmp_path)
    assert (bc.algo, bc.agent.hidden_pi, bc.run.dataset) == (
        "bc",
        (64, 64),
        "/data/d4rl/halfcheetah-medium-v2.hdf5",
    )


# ------------------------------------------------------------------------------------------------------------
# gathering on hand-written run folders
# ------------------------------------------------------------------------------------------------------------
def fake_run(out: Path, trial: dict, scores: list[float], finished: bool, every: int = 50) -> None:
    d = out / "runs" / trial["id"]
    d.mkdir(parents=True)
    (d / ".rl-run.json").write_text("{}")
    evals = [
        {"step": every * (i + 1), "return_mean": 10.0 * s, "return_std": 1.0, "normalized_score": s}
        for i, s in enumerate(scores)
    ]
    with open(d / "eval.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(evals[0]))
        w.writeheader()
        w.writerows(evals)
    if finished:
        cfg = trial_config(trial, out)
        result = {
            "id": trial["id"],
            "step": cfg.run.steps,
            "steps": cfg.run.steps,
            "evals": evals,
            "config": to_dict(cfg),
        }
        (d / "result.json").write_text(json.dumps(result))


def test_gather_mean_std_and_unfinished_trials(tmp_path):
    path = write_spec(
        tmp_path,
        """
name: synth
kind: rl
base: {steps: 100, eval_every: 50, dataset: hopper-medium-v5}
grid:
  variant: [{name: a, algo: bc}, {name: b, algo: td3bc}, {name: c, algo: iql}]
  seed: [0, 1, 2]
""",
    )
    spec = load_spec(path)
    out = tmp_path / "out"
    finals_a = [40.0, 50.0, 66.0]
    for seed, final in enumerate(finals_a):
        fake_run(out, spec.trial(f"a__hopper-medium-v5__s{seed}"), [10.0 + seed, final], finished=True)
    fake_run(out, spec.trial("b__hopper-medium-v5__s0"), [5.0, 7.0], finished=True)
    fake_run(out, spec.trial("b__hopper-medium-v5__s1"), [6.0], finished=False)  # killed after step 50
    # training speed: the median of the logged rates, per trial, then over the variant's trials
    for seed, rates in ((0, "10,30,20"), (1, "40")):
        rows = "".join(f"{50 * (i + 1)},{r}\n" for i, r in enumerate(rates.split(",")))
        (out / "runs" / f"b__hopper-medium-v5__s{seed}" / "progress.csv").write_text(
            "step,updates_per_s\n" + rows
        )
    (out / "errors").mkdir()
    (out / "errors" / "b__hopper-medium-v5__s2.txt").write_text("Traceback ...\nValueError: boom\n")
    # c: s0 finished with other settings than the spec's now (steps 80): refused, not averaged; s1, s2 not started
    c0 = spec.trial("c__hopper-medium-v5__s0")
    fake_run(out, c0, [1.0, 2.0], finished=True)
    res = json.loads((out / "runs" / c0["id"] / "result.json").read_text())
    res["config"]["steps"] = 80
    (out / "runs" / c0["id"] / "result.json").write_text(json.dumps(res))
    (out / "behaviour.json").write_text(
        json.dumps(
            {
                "hopper-medium-v5": {
                    "dataset": "hopper-medium-v5",
                    "dataset_size": None,
                    "normalized_score": 31.25,
                }
            }
        )
    )

    g = gather(spec, out)
    status = {t["id"]: t["status"] for t in g["trials"]}
    assert status["a__hopper-medium-v5__s2"] == "finished"
    assert status["b__hopper-medium-v5__s1"] == "unfinished"
    assert status["b__hopper-medium-v5__s2"] == "error"
    assert status["c__hopper-medium-v5__s0"] == "error"
    assert status["c__hopper-medium-v5__s1"] == "pending"
    assert trial_status(spec.trial("b__hopper-medium-v5__s1"), out)[0] == "new"  # no checkpoint: restart

    files = write_report(spec, out)
    assert {p.name for p in files} == {
        "results.csv",
        "summary.csv",
        "results.md",
        "curves_hopper-medium-v5.png",
    }
    rows = read_table(out / "results.csv")
    assert len(rows) == 3 * 2 + 2 + 1 + 2  # one row per trial and evaluation
    assert [r["step"] for r in rows if r["trial_id"] == "b__hopper-medium-v5__s1"] == ["50"]
    summary = {r["variant"]: r for r in read_table(out / "summary.csv")}
    assert float(summary["a"]["mean"]) == pytest.approx(statistics.fmean(finals_a), rel=1e-5)
    assert float(summary["a"]["std"]) == pytest.approx(statistics.stdev(finals_a), rel=1e-5)  # sample std
    assert summary["a"]["n_finished"] == "3" and summary["a"]["steps"] == "100"
    assert (summary["b"]["n_finished"], summary["b"]["mean"], summary["b"]["std"]) == ("1", "7", "")
    assert (summary["b"]["unfinished"], summary["b"]["failed"]) == ("s1@50", "s2")
    assert (summary["c"]["n_finished"], summary["c"]["failed"], summary["c"]["not_started"]) == (
        "0",
        "s0",
        "s1 s2",
    )
    assert float(summary["a"]["behaviour_score"]) == 31.25

    md = (out / "results.md").read_text()
    cmd = f"python benchmarks/sweep.py {path} --out {out}"
    assert md.splitlines()[0].startswith(f"<!-- regenerate: {cmd}")
    assert "at 100 gradient steps" in md
    assert "| variant | hopper-medium-v5 | updates/s |" in md
    assert "| behaviour data | 31.2 | |" in md
    assert "| a | 52.0 ± 13.1 (3 seeds) | — |" in md
    assert "| b | 7.0 (1 seed); unfinished: s1 at step 50; failed: s2 | 30 |" in md  # median(20, 40)
    assert float(summary["b"]["updates_per_s"]) == 30.0
    assert "| c | not started: s1, s2; failed: s0 | — |" in md
    assert "ValueError: boom" in md and "finished run whose settings differ (steps: 80" in md
    # --report-only: same tables, no Ray, exit status 1 (not everything finished)
    before = (out / "results.md").read_text()
    assert main([str(path), "--out", str(out), "--report-only"]) == 1
    assert (out / "results.md").read_text() == before


def test_staircase_trials_and_report(tmp_path):
    path = write_spec(
        tmp_path,
        "name: st\nkind: staircase\nbase: {steps_per_level: 8, batch_size: 16, dim: 4, heldout_samples: 32}\n"
        "grid: {estimator: [infonce], seed: [0, 1, 2]}\n",
    )
    spec = load_spec(path)
    out = tmp_path / "out"
    results = [run_trial(t, out) for t in spec.trials[:2]]
    for res in results:
        assert len(res["estimates"]) == 4 and res["estimates_every"] == 10 and res["step"] == 40
        assert [r["mi"] for r in res["levels"]] == [2, 4, 6, 8, 10]
    assert results[0]["estimates"] != results[1]["estimates"]  # the seed matters
    before = snapshot(out / "runs")
    assert run_trial(spec.trials[0], out) == results[0]  # cached, not rerun
    assert snapshot(out / "runs") == before
    write_report(spec, out)
    levels = [
        json.loads((out / "runs" / t["id"] / "result.json").read_text())["levels"] for t in spec.trials[:2]
    ]
    summary = read_table(out / "summary.csv")
    assert [r["true_mi"] for r in summary] == ["2", "4", "6", "8", "10"]
    for i, row in enumerate(summary):
        for m in ("bias", "mse", "heldout"):
            vals = [lv[i][m] for lv in levels]
            assert float(row[f"{m}_mean"]) == pytest.approx(statistics.fmean(vals), rel=1e-4, abs=1e-6)
            assert float(row[f"{m}_std"]) == pytest.approx(statistics.stdev(vals), rel=1e-4, abs=1e-6)
        assert row["n_seeds"] == "2" and row["task"] == "gauss-d4"
    md = (out / "results.md").read_text()
    assert "## `gauss-d4`, separable critic" in md and "**MSE**" in md and "| infonce | 2 |" in md
    assert "Not finished: `infonce__separable__d4__s2` (pending)" in md
    assert (out / "staircase_gauss-d4.png").stat().st_size > 0
    assert (out / "heldout_gauss-d4.png").stat().st_size > 0


RECIPE_SPEC = """
name: recipes
kind: staircase
base: {steps_per_level: 6, batch_size: 16, heldout_samples: 32, record_every: 1}
grid:
  estimator:
    - gan-dime
    - {name: gan-small-fast, estimator: gan-dime, critic_options: {hidden: [8, 8]}, lr: 2.0e-3}
    - {name: smile-der, estimator: smile, options: {tau: 2.0}, negatives: derangement}
  task: [gauss-d4]
  critic: [concat]
  seed: [3]
"""


def test_recipes_are_trials_that_train_as_estimate_would(tmp_path):
    """An estimator given as a recipe: its name is the trial's estimator; its options, critic sizes, lr and
    negatives are what trains (the per-step estimates equal `mie.estimate` with those settings); a plain entry's
    settings carry no recipe (the trials of older specs are unchanged); the report lists the recipes."""
    import mi_estimators as mie

    spec = load_spec(write_spec(tmp_path, RECIPE_SPEC))
    assert [t["id"] for t in spec.trials] == [
        "gan-dime__gauss-d4__concat__s3",
        "gan-small-fast__gauss-d4__concat__s3",
        "smile-der__gauss-d4__concat__s3",
    ]
    assert "recipe" not in spec.trials[0]["settings"]
    assert spec.trials[1]["settings"]["recipe"] == {
        "estimator": "gan-dime",
        "options": {},
        "critic_options": {"hidden": [8, 8]},
        "lr": 2e-3,
        "negatives": "derangement",  # gan-dime's own
    }
    assert spec.trials[2]["settings"]["recipe"]["options"] == {"tau": 2.0}
    both = RECIPE_SPEC.replace("critic: [concat]", "critic: [concat, separable]")
    both = both.replace("negatives: derangement}", "negatives: derangement, critics: [separable]}")
    ids = [t["id"] for t in load_spec(write_spec(tmp_path, both, "both.yaml")).trials]
    assert ids == [
        "gan-dime__gauss-d4__concat__s3",
        "gan-dime__gauss-d4__separable__s3",
        "gan-small-fast__gauss-d4__concat__s3",
        "gan-small-fast__gauss-d4__separable__s3",
        "smile-der__gauss-d4__separable__s3",  # its critics only
    ]
    out = tmp_path / "out"
    task = sc.parse_task("gauss-d4")
    for t, (name, copts, lr, negatives, options) in zip(
        spec.trials,
        (
            ("gan-dime", {"hidden": (128, 128)}, sc.LR, None, {}),
            ("gan-dime", {"hidden": (8, 8)}, 2e-3, None, {}),
            ("smile", {"hidden": (128, 128)}, sc.LR, "derangement", {"tau": 2.0}),
        ),
    ):
        res = run_trial(t, out)
        hist = mie.estimate(
            mie.make(name, **options),
            lambda step: task.task(step, 6),
            critic="concat",
            critic_options=copts,
            steps=30,
            batch_size=16,
            lr=lr,
            seed=3,
            negatives=negatives,
        )
        assert res["estimates"] == hist.estimates
        assert res["negatives"] == (negatives or "derangement")
    assert spec.trials[1] is not None and trial_status(spec.trials[1], out)[0] == "finished"
    write_report(spec, out)
    md = (out / "results.md").read_text()
    assert "| gan-small-fast | gan-dime |  | hidden=(8, 8) | 0.002 | derangement |" in md
    assert "| smile-der | smile | tau=2.0 |  | 0.0005 | derangement |" in md
    assert "| gan-small-fast | 1 |" in md  # its row in the tables


TASK_SPEC = """
name: suite
kind: staircase
base: {steps_per_level: 20, batch_size: 16, heldout_samples: 64, record_every: 1}
grid:
  estimator: [nwj, kl-dime]
  task: [gauss-d5, {name: cubic-d3, transform: cubic, dim: 3}, student-t3-d5]
  critic: [separable, concat]
  seed: [0, 1]
"""


def test_task_axis_expands(tmp_path):
    spec = load_spec(write_spec(tmp_path, TASK_SPEC))
    assert len(spec.trials) == 2 * 3 * 2 * 2
    ids = [t["id"] for t in spec.trials]
    assert ids[:4] == [
        "nwj__gauss-d5__separable__s0",
        "nwj__gauss-d5__separable__s1",
        "nwj__gauss-d5__concat__s0",
        "nwj__gauss-d5__concat__s1",
    ]
    t = spec.trial("kl-dime__student-t3-d5__concat__s1")
    assert t["params"] == {
        "estimator": "kl-dime",
        "task": "student-t3-d5",
        "critic": "concat",
        "dim": 5,
        "seed": 1,
    }
    assert t["settings"]["task"] == {
        "name": "student-t3-d5",
        "base": "student_t",
        "dim": 5,
        "transform": None,
        "df": 3.0,
    }
    cubic = spec.trial("nwj__cubic-d3__separable__s0")["settings"]
    assert cubic["task"]["transform"] == "cubic" and cubic["task"]["dim"] == 3
    assert (cubic["steps_per_level"], cubic["batch_size"], cubic["heldout_samples"]) == (20, 16, 64)
    tasks = [sc.TaskSpec(**spec.trial(i)["settings"]["task"]).level_task(4) for i in ids[::4]]
    assert [type(x).__name__ for x in tasks[:3]] == ["CorrelatedGaussian", "TransformedTask", "StudentTTask"]
    assert [x.mi for x in tasks] == [10.0] * 6


@pytest.fixture(scope="module")
def suite_run(tmp_path_factory):
    """A tiny estimator suite, one seed (nwj and kl-dime x gauss-d5 and student-t3-d5 x both critics), run in process."""
    tmp = tmp_path_factory.mktemp("suite")
    path = write_spec(tmp, TASK_SPEC.replace("seed: [0, 1]", "seed: [0]"))
    spec = load_spec(path)
    out = tmp / "out"
    for t in spec.trials:
        if "cubic" not in t["id"]:
            run_trial(t, out)
    return path, spec, out


def test_heldout_per_level_is_present_and_finite(suite_run):
    _, spec, out = suite_run
    for t in spec.trials:
        if "cubic" in t["id"]:
            continue
        res = json.loads((out / "runs" / t["id"] / "result.json").read_text())
        assert res["stopped_at"] is None and res["step"] == 100 and len(res["estimates"]) == 100
        assert res["negatives"] == ("derangement" if t["params"]["estimator"] == "kl-dime" else "all-pairs")
        assert [h["mi"] for h in res["heldout"]] == [2, 4, 6, 8, 10]
        for h, lv in zip(res["heldout"], res["levels"]):
            assert h["error"] is None and math.isfinite(h["mean"]) and math.isfinite(h["std"])
            assert lv["heldout"] == h["mean"] and lv["heldout_std"] == h["std"]
    write_report(spec, out)
    rows = read_table(out / "results.csv")
    assert len(rows) == 8 * 5
    assert all(math.isfinite(float(r["heldout"])) for r in rows)


def test_report_tables_per_task_and_critic(suite_run):
    path, spec, out = suite_run
    files = write_report(spec, out)
    names = sorted(f.name for f in files)
    assert names == sorted(
        ["results.csv", "summary.csv", "results.md"]
        + [f"{k}_{t}.png" for k in ("staircase", "heldout") for t in ("gauss-d5", "student-t3-d5")]
    )
    md = (out / "results.md").read_text()
    for task in ("gauss-d5", "student-t3-d5"):
        for critic in ("separable", "concat"):
            head = f"## `{task}`, {critic} critic"
            assert head in md
            section = md.split(head)[1].split("\n## ")[0]
            for title in ("**MSE**", "**bias**", "**variance**", "**held-out estimate**"):
                table = section.split(title)[1].split("\n\n")[1]  # the unit, a blank line, the table
                lines = table.splitlines()
                assert lines[0] == "| estimator | n | 2 | 4 | 6 | 8 | 10 |"
                assert [ln.split(" | ")[0] for ln in lines[2:]] == ["| nwj", "| kl-dime"]
                assert all(ln.split(" | ")[1] == "1" for ln in lines[2:])
    assert "## `cubic-d3`" not in md  # no finished trial
    assert "Not finished: `nwj__cubic-d3__separable__s0` (pending)" in md
    assert "| `student-t3-d5` | Student-t(df=3, dim=5) | 5 |" in md
    assert "## Cost" in md and "| nwj |" in md.split("## Cost")[1]
    # the best-per-level summary names the estimator-critic pair of lowest MSE, as results.csv has it
    rows = read_table(out / "results.csv")
    best = md.split("## Best per level")[1].split("**Held-out")[0]
    for task in ("gauss-d5", "student-t3-d5"):
        line = next(ln for ln in best.splitlines() if ln.startswith(f"| `{task}` |"))
        cells = [c.strip() for c in line.split("|")[2:-1]]
        for cell, level in zip(cells, (2, 4, 6, 8, 10), strict=True):
            value, est, critic = min(
                (float(r["mse"]), r["estimator"], r["critic"])
                for r in rows
                if r["task"] == task and float(r["true_mi"]) == level and math.isfinite(float(r["mse"]))
            )
            assert cell.startswith(f"{est} ({critic}) ")
    # the summary's cells are the results' rows (one seed: the mean is the value, no std)
    res = {(r["trial_id"], r["true_mi"]): r for r in rows}
    for row in read_table(out / "summary.csv"):
        tid = f"{row['estimator']}__{row['task']}__{row['critic']}__s0"
        assert row["mse_mean"] == res[(tid, row["true_mi"])]["mse"] and row["mse_std"] == ""
        assert row["heldout_mean"] == res[(tid, row["true_mi"])]["heldout"]
    # --report-only rebuilds the same tables from the folders alone
    before = {f: (out / f).read_text() for f in ("results.csv", "results.md")}
    assert main([str(path), "--out", str(out), "--report-only"]) == 1  # the cubic trials are not run
    assert {f: (out / f).read_text() for f in before} == before


def test_the_heldout_legend_names_every_panels_estimators(suite_run, tmp_path, monkeypatch):
    """An estimator run on the first critic only (as the recommended recipe runs on the hybrid one only) is in the
    legend, which sits beside the last panel."""
    _, spec, done = suite_run
    out = tmp_path / "out"
    shutil.copytree(done / "runs", out / "runs")
    for d in (out / "runs").glob("kl-dime__*__concat__s0"):
        shutil.rmtree(d)
    drawn = {}
    monkeypatch.setattr(plots, "_save", lambda fig, path: drawn.setdefault(path.name, fig))
    write_report(spec, out)
    fig = drawn["heldout_gauss-d5.png"]
    panels = [ax.get_title() for ax in fig.axes]
    assert panels == ["separable critic", "concat critic"]
    assert [c.get_label() for c in fig.axes[-1].containers] == ["nwj"]  # kl-dime is not on the last panel
    assert [t.get_text() for t in fig.axes[-1].get_legend().get_texts()] == ["true MI", "nwj", "kl-dime"]


def test_a_stopped_run_is_reported_with_the_seeds_it_has(suite_run, tmp_path):
    _, spec, done = suite_run
    out = tmp_path / "out"
    shutil.copytree(done / "runs", out / "runs")
    tid = "nwj__gauss-d5__separable__s0"
    twin = spec.trial(tid)  # a second seed that stopped in level 4 (8 nats): hand-written from the first
    res = json.loads((out / "runs" / tid / "result.json").read_text())
    res["params"] = {**res["params"], "seed": 1}
    res["id"] = tid.replace("s0", "s1")
    res["stopped_at"], res["error"] = 65, "non-finite gradient in parameter 0 (of 6 with gradients)"
    res["estimates"] = res["estimates"][:65]
    for lv, h in zip(res["levels"][3:], res["heldout"][3:]):
        lv.update(bias="nan", variance="nan", mse="nan", heldout="nan", heldout_std="nan", nonfinite=10)
        h.update(mean="nan", std="nan", error="level not completed")
    two = write_spec(tmp_path, TASK_SPEC.replace("estimator: [nwj, kl-dime]", "estimator: [nwj]"), "two.yaml")
    spec2 = load_spec(two)
    assert spec2.trial(res["id"])["params"] == res["params"] and twin["settings"] == res["settings"]
    (out / "runs" / res["id"]).mkdir()
    (out / "runs" / res["id"] / "result.json").write_text(json.dumps(res))
    write_report(spec2, out)
    md = (out / "results.md").read_text()
    mse = md.split("## `gauss-d5`, separable critic")[1].split("**bias**")[0]
    row = next(ln for ln in mse.splitlines() if ln.startswith("| nwj |"))
    cells = row.split(" | ")
    assert cells[1] == "2" and " ± " in cells[2] and "(" not in cells[4]
    assert cells[5].endswith("(1/2)") and cells[6].rstrip(" |").endswith("(1/2)") and " ± " not in cells[5]
    assert f"- `{res['id']}`: step 65 (level 8): non-finite gradient in parameter 0" in md
    # a pair competes for "best" only where all its seeds are finite: nwj separable (two seeds) at 2-6 nats only
    best = md.split("## Best per level")[1].split("**Held-out")[0]
    line = next(ln for ln in best.splitlines() if ln.startswith("| `gauss-d5` |"))
    cells = [c.strip() for c in line.split("|")[2:-1]]
    assert [c.split(" ")[:2] for c in cells[:3]] == [["nwj", "(separable)"]] * 3 and cells[3:] == ["", ""]
    rows = [r for r in read_table(out / "results.csv") if r["trial_id"] == res["id"]]
    assert [r["mse"] for r in rows][3:] == ["nan", "nan"] and rows[0]["stopped_at"] == "65"


def test_training_is_the_plain_runs_and_heldout_reads_the_levels_end():
    for est, critic in (("nwj", "separable"), ("kl-dime", "concat"), ("interpolated", "separable")):
        r = sc.run_protocol(est, "gauss-d4", critic, 10, 16, 3, heldout_samples=32)
        assert r["estimates"] == sc.run(
            est, critic, 10, 4, 16, 3
        )  # held-out evaluation leaves training alone
        off = sc.run_protocol(est, "gauss-d4", critic, 10, 16, 3, heldout_samples=0)
        assert off["estimates"] == r["estimates"] and all(math.isnan(h["mean"]) for h in off["heldout"])
    # the held-out estimate of level 1 is that of the critic after the 10 steps of level 1 alone
    import mi_estimators as mie

    r = sc.run_protocol("nwj", "gauss-d4", "separable", 10, 16, 3, heldout_samples=32)
    est, net = sc._networks("nwj", "separable", 4, 4, 3)
    task = sc.parse_task("gauss-d4")
    hist = mie.estimate(
        est, lambda step: task.task(step, 10), critic=net, steps=10, batch_size=16, lr=sc.LR, seed=3
    )
    g = torch.Generator().manual_seed(sc.heldout_seed(3, 0))
    x, y = task.level_task(0).sample(32, generator=g)
    assert mie.evaluate(est, hist.critic, x, y, batch_size=16, generator=g).mean == r["heldout"][0]["mean"]
    # held-out samples come from their own generators, not the training one (seeded with the seed itself)
    assert len({sc.heldout_seed(s, i) for s in range(3) for i in range(5)} | set(range(3))) == 15 + 3


def test_a_rerun_gives_bit_identical_rows(tmp_path):
    spec = load_spec(write_spec(tmp_path, TASK_SPEC))
    trials = [spec.trial("kl-dime__student-t3-d5__concat__s1"), spec.trial("nwj__cubic-d3__separable__s0")]
    tables = []
    for run in ("a", "b"):
        out = tmp_path / run
        results = [run_trial(t, out) for t in trials]
        write_report(spec, out)
        tables.append(((out / "results.csv").read_text().splitlines()[1:], results))
    (rows_a, res_a), (rows_b, res_b) = tables
    assert len(rows_a) == 1 + 2 * 5 and rows_a == rows_b
    for a, b in zip(res_a, res_b):
        assert {k: v for k, v in a.items() if k != "seconds"} == {
            k: v for k, v in b.items() if k != "seconds"
        }


# ------------------------------------------------------------------------------------------------------------
# one trial: chunks, skip when finished, exact resume after a kill (in-process, no Ray)
# ------------------------------------------------------------------------------------------------------------
def test_trial_resumes_exactly_after_a_kill(tmp_path, hopper_file):
    spec = load_spec(tiny_rl_spec(tmp_path, hopper_file))
    trial = spec.trial("td3bc__tiny-hopper__s1")
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    reports: list[dict] = []
    res = run_trial(trial, straight, report=reports.append)
    assert [r["step"] for r in reports] == [25, 50] and reports[-1]["normalized_score"] is not None
    assert res["final"]["step"] == 50 and trial_status(trial, straight)[0] == "finished"
    before = snapshot(straight / "runs")
    assert run_trial(trial, straight) == json.loads(
        (straight / "runs" / trial["id"] / "result.json").read_text()
    )
    assert snapshot(straight / "runs") == before  # a finished trial is not rerun

    # the kill: the trial's own Trainer stops at step 25 (after its checkpoint), with a half-written eval row
    cfg = trial_config(trial, killed)
    Trainer(cfg, quiet=True).train(until=25)
    run = Path(cfg.run.run_dir)
    first = (run / "eval.csv").read_text()
    with open(run / "eval.csv", "a") as f:
        f.write("37,12.5")
    assert trial_status(trial, killed) == ("resume", "step 25")
    reports.clear()
    torch.manual_seed(999)  # a resumed trial must not depend on the process's RNG state
    run_trial(trial, killed, report=reports.append)
    assert [r["step"] for r in reports] == [50]
    text = (run / "eval.csv").read_text()
    assert text.startswith(first) and [r["step"] for r in read_evals(run / "eval.csv")] == [25, 50]
    assert_same_state(agent_state(straight / "runs" / trial["id"]), agent_state(run))
    assert text == (straight / "runs" / trial["id"] / "eval.csv").read_text()


def test_changed_settings_are_refused(tmp_path, hopper_file):
    spec_path = tiny_rl_spec(tmp_path, hopper_file)
    spec = load_spec(spec_path)
    trial = spec.trial("bc__tiny-hopper__s0")
    run_trial(trial, tmp_path / "out")
    spec_path.write_text(spec_path.read_text().replace("steps: 50,", "steps: 75,"))
    changed = load_spec(spec_path).trial("bc__tiny-hopper__s0")
    status, why = trial_status(changed, tmp_path / "out")
    assert status == "changed" and "steps: 50 in the run, 75 in the spec" in why
    with pytest.raises(RuntimeError, match="settings differ"):
        run_trial(changed, tmp_path / "out")
    assert "settings differ" in (tmp_path / "out" / "errors" / "bc__tiny-hopper__s0.txt").read_text()


def test_a_diverged_trial_is_an_outcome_recorded_once(tmp_path, hopper_file):
    # `max_abs_loss` so small that TD3+BC's first critic loss counts as diverged; BC's losses stay under it
    spec_path = tiny_rl_spec(tmp_path, hopper_file)
    text = spec_path.read_text().replace(
        "config: configs/td3bc/hopper-medium-v5.yaml}",
        "config: configs/td3bc/hopper-medium-v5.yaml, max_abs_loss: 1e-9}",
    )
    spec_path.write_text(text.replace("seed: [0, 1]", "seed: [0]"))
    spec = load_spec(spec_path)
    out = tmp_path / "out"
    trial = spec.trial("td3bc__tiny-hopper__s0")
    reports: list[dict] = []
    res = run_trial(trial, out, report=reports.append)
    assert res["step"] == 0 and res["final"] == {} and res["evals"] == []
    assert res["diverged"].startswith("step 1: term 'critic_td' diverged to ")
    assert reports[-1]["diverged"] == res["diverged"] and reports[-1]["normalized_score"] is None
    assert not (out / "errors" / f"{trial['id']}.txt").exists()  # an outcome, not a failure
    assert trial_status(trial, out)[0] == "finished"
    before = snapshot(out / "runs")
    assert run_trial(trial, out) == res and snapshot(out / "runs") == before  # not rerun

    run_trial(spec.trial("bc__tiny-hopper__s0"), out)
    g = gather(spec, out)
    assert {t["id"]: (t["status"], t["diverged_at"]) for t in g["trials"]} == {
        "bc__tiny-hopper__s0": ("finished", None),
        "td3bc__tiny-hopper__s0": ("diverged", 1),
    }
    write_report(spec, out)
    summary = {r["variant"]: r for r in read_table(out / "summary.csv")}
    assert (summary["td3bc"]["n_finished"], summary["td3bc"]["diverged"], summary["td3bc"]["failed"]) == (
        "0",
        "s0@1",
        "",
    )
    assert (summary["bc"]["n_finished"], summary["bc"]["diverged"]) == ("1", "")
    md = (out / "results.md").read_text()
    assert "| td3bc | diverged: s0 at step 1 |" in md
    assert "Diverged trials (a rerun skips them):" in md and "term 'critic_td' diverged to" in md
    assert "Failed trials" not in md
    assert main([str(spec_path), "--out", str(out), "--report-only"]) == 0  # every trial has its outcome


def test_damaged_trial_files_are_named_not_fatal(tmp_path, hopper_file):
    spec = load_spec(tiny_rl_spec(tmp_path, hopper_file))
    trial = spec.trial("bc__tiny-hopper__s0")
    run_trial(trial, tmp_path / "out")
    result = run_dir(tmp_path / "out", trial) / "result.json"
    for damaged in (result.read_bytes()[:40], b"\xff\xfe garbage", b"[1, 2]"):
        result.write_bytes(damaged)
        status, why = trial_status(trial, tmp_path / "out")
        assert status == "changed" and str(result) in why and "unreadable" in why


# ------------------------------------------------------------------------------------------------------------
# end to end on a local Ray instance
# ------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.tune")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def finished_sweep(ray_local, hopper_file, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sweep")
    spec_path = tiny_rl_spec(tmp, hopper_file)
    out = tmp / "out"
    summary = run_sweep(load_spec(spec_path), out)
    return spec_path, out, summary


def test_local_ray_sweep_end_to_end(finished_sweep):
    spec_path, out, summary = finished_sweep
    ids = ["bc__tiny-hopper__s0", "bc__tiny-hopper__s1", "td3bc__tiny-hopper__s0", "td3bc__tiny-hopper__s1"]
    assert (sorted(summary["started"]), summary["skipped"], summary["errors"]) == (ids, [], {})
    rows = read_table(out / "results.csv")
    assert sorted((r["trial_id"], r["step"]) for r in rows) == sorted(
        (i, s) for i in ids for s in ("25", "50")
    )
    assert all(r["status"] == "finished" and r["normalized_score"] for r in rows)
    summ = {r["variant"]: r for r in read_table(out / "summary.csv")}
    for v in ("bc", "td3bc"):
        finals = [float(r["normalized_score"]) for r in rows if r["variant"] == v and r["step"] == "50"]
        assert summ[v]["n_finished"] == "2"
        assert float(summ[v]["mean"]) == pytest.approx(statistics.fmean(finals), rel=1e-4)
    md = (out / "results.md").read_text()
    assert "| variant | tiny-hopper |" in md and "(2 seeds) |" in md and "| behaviour data |" in md
    beh = json.loads((out / "behaviour.json").read_text())["tiny-hopper"]
    assert beh["episodes"] == 4 and beh["transitions"] == 400 and beh["normalized_score"] is not None
    assert (out / "curves_tiny-hopper.png").stat().st_size > 0
    assert (out / "sweep.log").exists() and any((out / "ray").iterdir())
    for i in ids:
        assert json.loads((out / "runs" / i / "result.json").read_text())["step"] == 50


def test_rerun_after_a_kill_skips_finished_and_resumes_the_rest(finished_sweep, tmp_path, capsys):
    spec_path, done_out, _ = finished_sweep
    out = tmp_path / "out"
    shutil.copytree(done_out, out)
    # the folder alone, as git carries it to another machine: no storage (Ray's checkpoints under out/ray)
    shutil.rmtree(out / "ray")
    (out / ".mirror.json").unlink()
    victim = "td3bc__tiny-hopper__s1"
    shutil.rmtree(out / "runs" / victim)
    spec = load_spec(spec_path)
    cfg = trial_config(spec.trial(victim), out)
    with Trainer(cfg, quiet=True) as trainer:  # closed: its lock would keep the Ray worker out of the run dir
        trainer.train(until=25)  # killed after the step-25 checkpoint
    with open(Path(cfg.run.run_dir) / "eval.csv", "a") as f:
        f.write("30,1")  # and in the middle of writing a row
    before = {
        i: snapshot(out / "runs" / i)
        for i in ("bc__tiny-hopper__s0", "bc__tiny-hopper__s1", "td3bc__tiny-hopper__s0")
    }
    # what a later session needs to resume: the interrupted trial's checkpoint, nothing of the finished ones
    assert carry_files(spec, out) == [out / "runs" / victim / "checkpoint.pt"]
    capsys.readouterr()
    assert main([str(spec_path), "--out", str(out), "--list-carry"]) == 0
    assert capsys.readouterr().out.strip().endswith(f"{victim}/checkpoint.pt")

    assert main([str(spec_path), "--out", str(out)]) == 0  # the same command again
    said = capsys.readouterr().out
    assert (
        "3 finished (skipped), 1 to resume: td3bc__tiny-hopper__s1 (evaluated up to step 25), 0 new" in said
    )
    assert said.count("  done  ") == 1 and f"done  {victim} step 50" in said
    for i, snap in before.items():
        assert snapshot(out / "runs" / i) == snap, f"{i} was touched"
    evals = read_evals(out / "runs" / victim / "eval.csv")
    assert [e["step"] for e in evals] == [25, 50]
    log = (out / "logs" / f"{victim}.log").read_text()
    assert "resumed td3bc__tiny-hopper__s1 at step 25 of 50" in log
    assert_same_state(agent_state(done_out / "runs" / victim), agent_state(out / "runs" / victim))
    assert carry_files(spec, out) == []
    assert (out / "runs" / victim / "eval.csv").read_text() == (
        done_out / "runs" / victim / "eval.csv"
    ).read_text()


def test_a_removed_run_folder_runs_again(finished_sweep, tmp_path, capsys):
    """Removing a trial's folder from the output (to run it again, as for a diverged run) drops its
    checkpoints from the storage too: it is not mirrored back, and it runs afresh."""
    spec_path, done_out, _ = finished_sweep
    out = tmp_path / "out"
    shutil.copytree(done_out, out)
    shutil.rmtree(out / "runs" / "bc__tiny-hopper__s0")
    capsys.readouterr()
    assert main([str(spec_path), "--out", str(out)]) == 0
    assert "3 finished (skipped), 0 to resume, 1 new" in capsys.readouterr().out
    assert json.loads((out / "runs" / "bc__tiny-hopper__s0" / "result.json").read_text())["resumed_from"] == 0


def test_a_failing_trial_is_reported_not_fatal(ray_local, hopper_file, tmp_path, capsys):
    path = write_spec(
        tmp_path,
        f"""
name: broken
kind: rl
base: {{steps: 20, eval_every: 0, final_eval: false, dataset: {hopper_file}, {TINY_NETS}}}
grid:
  variant:
    - {{name: nope, algo: mi, estimator: no-such-bound}}
    - {{name: bc, algo: bc}}
    - {{name: blowup, algo: td3bc, max_abs_loss: 1e-9}}
  seed: [0]
""",
    )
    out = tmp_path / "out"
    assert main([str(path), "--out", str(out)]) == 1
    captured = capsys.readouterr()
    err = captured.err
    assert "1 trial(s) failed: nope__tiny-hopper__s0" in err  # the diverged one is not a failure
    assert (
        "done  blowup__tiny-hopper__s0 step 0 diverged: step 1: term 'critic_td' diverged to" in captured.out
    )
    assert "diverged" in json.loads((out / "runs" / "blowup__tiny-hopper__s0" / "result.json").read_text())
    assert "unknown estimator 'no-such-bound'" in (out / "errors" / "nope__tiny-hopper__s0.txt").read_text()
    assert (out / "runs" / "bc__tiny-hopper__s0" / "result.json").exists()
    md = (out / "results.md").read_text()
    assert "| nope | failed: s0 |" in md and "unknown estimator 'no-such-bound'" in md
    assert "| blowup | diverged: s0 at step 1 |" in md


def test_a_second_driver_on_the_same_folder_is_refused(tmp_path):
    import subprocess

    spec = load_spec(write_spec(tmp_path, RL_OK))
    out = tmp_path / "out"
    out.mkdir()
    driver = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(120)"]
    )  # a driver still running
    try:
        (out / ".sweep.lock").write_text(f"{driver.pid}\n")  # rl._atomic's lock, as the old drivers wrote it
        with pytest.raises(SweepError, match=rf"sweep folder {out} is in use by .*\(pid {driver.pid} on "):
            run_sweep(spec, out)
    finally:
        driver.kill()
        driver.wait()
    assert not (out / "runs").exists() and (out / ".sweep.lock").read_text() == f"{driver.pid}\n"


def test_imports_reach_the_trials_config_and_register_the_estimator(tmp_path, hopper_file, monkeypatch):
    import mi_estimators as mie

    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "sweep_bounds_t32.py").write_text(
        "import mi_estimators as mie\n\n\n@mie.register('sweep-dv-t32')\n"
        "def bound(s):\n    return s.positive.mean() - mie.logmeanexp(s.negative)\n"
    )
    monkeypatch.chdir(tmp_path)
    spec_path = write_spec(
        tmp_path,
        f"""
name: imports
kind: rl
base: {{steps: 4, eval_every: 0, final_eval: false, checkpoint_every: 2, dataset: {hopper_file}, {TINY_NETS}}}
grid:
  variant:
    - {{name: mine, algo: mi, imports: [lib/sweep_bounds_t32.py], estimator: sweep-dv-t32, n_negatives: 4}}
  seed: [0]
""",
    )
    (trial,) = load_spec(spec_path).trials
    # a relative .py path is resolved as config paths are: Ray Tune runs each trial in a folder of its own
    assert trial["overrides"]["imports"] == [str(tmp_path / "lib" / "sweep_bounds_t32.py")]
    try:
        res = run_trial(trial, tmp_path / "out")
        assert res["step"] == 4 and res["config"]["estimator"] == "sweep-dv-t32"
        assert res["config"]["imports"] == [str(tmp_path / "lib" / "sweep_bounds_t32.py")]
        assert not (
            tmp_path / "out" / "runs" / trial["id"] / ".rl-run.lock"
        ).exists()  # released by the trial
        assert trial_status(trial, tmp_path / "out")[0] == "finished"
    finally:
        if "sweep-dv-t32" in mie.available():
            mie.unregister("sweep-dv-t32")
        sys.modules.pop("sweep_bounds_t32", None)
    spec_path.write_text(spec_path.read_text().replace("lib/sweep_bounds_t32.py", "lib/gone.py"))
    with pytest.raises(
        SpecError, match=r"grid\.variant\[0\] \(mine\)\.imports\[0\]: no such file: lib/gone\.py"
    ):
        load_spec(spec_path)


def test_publish_copies_the_report_files_only(tmp_path):
    src = tmp_path / "out"
    src.mkdir()
    (src / "results.md").write_text("# table\n")
    (src / "curves_x.png").write_bytes(b"\x89PNG")
    copied = publish([src / "results.md", src / "curves_x.png"], tmp_path / "pub" / "sweep")
    assert [p.name for p in copied] == ["results.md", "curves_x.png"]
    assert (tmp_path / "pub" / "sweep" / "results.md").read_text() == "# table\n"
    assert sorted(p.name for p in (tmp_path / "pub" / "sweep").iterdir()) == ["curves_x.png", "results.md"]


def test_a_cells_seeds_in_one_protocol_call_are_its_seeds_alone():
    """`run_protocol` with a list of seeds (one stacked `estimate`): each seed's training estimates and held-out
    reads are those of its own call, to float32 rounding."""
    for est, critic in (("nwj", "separable"), ("kl-dime", "concat")):
        packed = sc.run_protocol(est, "gauss-d4", critic, 10, 16, [3, 5], heldout_samples=32)
        for seed, r in zip([3, 5], packed, strict=True):
            alone = sc.run_protocol(est, "gauss-d4", critic, 10, 16, seed, heldout_samples=32)
            assert r["estimates"] == pytest.approx(alone["estimates"], rel=1e-4, abs=1e-4)
            assert [h["mean"] for h in r["heldout"]] == pytest.approx(
                [h["mean"] for h in alone["heldout"]], rel=1e-4, abs=1e-4
            )


def test_a_cells_seeds_pack_into_one_trial_that_writes_each_seeds_result(tmp_path):
    """`pack`: the unfinished seeds of a staircase cell become one trial (one stacked `run_protocol`); each seed's
    `result.json` is its own trial's to float32 rounding; a rerun after one seed finished runs the others only;
    the report holds every trial once. `pack_seeds: false` keeps one trial per seed."""
    text = TASK_SPEC.replace(
        "task: [gauss-d5, {name: cubic-d3, transform: cubic, dim: 3}, student-t3-d5]", "task: [gauss-d5]"
    )
    text = text.replace("estimator: [nwj, kl-dime]", "estimator: [nwj]").replace(
        "seed: [0, 1]", "seed: [0, 1, 2]"
    )
    spec = load_spec(write_spec(tmp_path, text))
    assert spec.pack_seeds and len(spec.trials) == 6
    packed = pack(spec.trials)
    assert [t["id"] for t in packed] == ["nwj__gauss-d5__separable__s0+1+2", "nwj__gauss-d5__concat__s0+1+2"]
    assert pack(spec.trials[:1]) == spec.trials[:1]  # one seed: the trial itself
    out = tmp_path / "packed"
    first = spec.trial("nwj__gauss-d5__separable__s1")
    run_trial(first, out)  # as if a killed run had finished seed 1 alone
    done = (run_dir(out, first) / RESULT).read_text()
    assert run_trial(packed[0], out)["members"] == [
        "nwj__gauss-d5__separable__s0",
        "nwj__gauss-d5__separable__s2",
    ]
    assert (run_dir(out, first) / RESULT).read_text() == done  # not run again
    run_trial(packed[1], out)
    alone = tmp_path / "alone"
    for t in spec.trials:
        a = run_trial(t, alone)
        b = json.loads((run_dir(out, t) / RESULT).read_text())
        assert b["params"] == a["params"] and b["settings"] == a["settings"]
        assert b["estimates"] == pytest.approx(a["estimates"], rel=1e-4, abs=1e-4)
        assert [r["heldout"] for r in b["levels"]] == pytest.approx(
            [r["heldout"] for r in a["levels"]], rel=1e-4, abs=1e-4
        )
        assert b.get("packed_seeds") == (
            None if t is first else [0, 2] if "separable" in t["id"] else [0, 1, 2]
        )
        assert trial_status(t, out)[0] == "finished"
    write_report(spec, out)
    rows = read_table(out / "results.csv")
    assert sorted({r["trial_id"] for r in rows}) == sorted(t["id"] for t in spec.trials)
    off = load_spec(write_spec(tmp_path, "pack_seeds: false\n" + text, name="off.yaml"))
    assert not off.pack_seeds
    with pytest.raises(SpecError, match="pack_seeds must be true or false"):
        load_spec(write_spec(tmp_path, "pack_seeds: 2\n" + text, name="bad.yaml"))


def _rl_pack_spec(tmp: Path, dataset: Path, extra: str = "pack_seeds: true") -> Path:
    return write_spec(
        tmp,
        f"""
name: rlpack
kind: rl
{extra}
base: {{steps: 50, eval_every: 25, eval_episodes: 1, checkpoint_every: 25, dataset: {dataset}, {TINY_NETS}}}
grid:
  variant:
    - {{name: td3bc, algo: td3bc}}
  seed: [0, 1, 2]
""",
        "rlpack.yaml",
    )


def test_a_cells_rl_seeds_pack_into_one_seed_group(tmp_path, hopper_file):
    """RL seeds pack too (`pack_seeds: true`; by default only where trials have a GPU share): one
    `rl.train.SeedGroup` trial whose members each write the run folder and result.json of their own trial, with
    their numbers to float32 rounding; a kill after the first chunk resumes bit for bit; a finished member is not
    run again."""
    spec = load_spec(_rl_pack_spec(tmp_path, hopper_file))
    assert spec.pack_seeds and "fast" not in spec.trials[0]["overrides"]  # the group runs fast: false itself
    off = load_spec(_rl_pack_spec(tmp_path, hopper_file, extra=""))
    assert not off.pack_seeds  # on CPUs: one process per seed
    (packed,) = pack(spec.trials)
    assert packed["id"] == "td3bc__tiny-hopper__s0+1+2" and packed["kind"] == "rl-pack"

    straight, alone = tmp_path / "straight", tmp_path / "alone"
    reports: list[dict] = []
    assert run_trial(packed, straight, report=reports.append)["members"] == [t["id"] for t in spec.trials]
    assert [r["member_steps"] for r in reports] == [
        dict.fromkeys([t["id"] for t in spec.trials], s) for s in (25, 50)
    ]
    for t in spec.trials:
        a, b = run_trial(t, alone), json.loads((run_dir(straight, t) / RESULT).read_text())
        assert b["step"] == a["step"] == 50 and b["config"] == {
            **a["config"],
            "run_dir": b["config"]["run_dir"],
            "fast": False,  # the stacked update's; one trial alone takes the fast paths
        }
        assert [e["step"] for e in b["evals"]] == [e["step"] for e in a["evals"]] == [25, 50]
        for name, sd in agent_state(run_dir(alone, t))["modules"].items():
            other = agent_state(run_dir(straight, t))["modules"][name]
            assert max((sd[k] - other[k]).abs().max().item() for k in sd) <= 1e-4, (t["id"], name)
        assert trial_status(t, straight)[0] == "finished"

    # seed 1 finished alone, then the pack killed after its first chunk's checkpoints: a rerun of the whole cell
    # trains seeds 0 and 2 only, resumed bit for bit (against the same two seeds stacked, uninterrupted)
    s0, s1, s2 = (spec.trial(f"td3bc__tiny-hopper__s{k}") for k in range(3))
    two, killed = tmp_path / "two", tmp_path / "killed"
    run_trial(pack([s0, s2])[0], two)
    run_trial(s1, killed)
    done = (run_dir(killed, s1) / RESULT).read_text()

    def stop(metrics):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_trial(packed, killed, stop)
    assert trial_status(s0, killed) == ("resume", "step 25") and trial_status(s2, killed)[0] == "resume"
    assert run_trial(packed, killed)["members"] == [s0["id"], s2["id"]]
    assert (run_dir(killed, s1) / RESULT).read_text() == done
    for t in (s0, s2):
        assert_same_state(agent_state(run_dir(two, t)), agent_state(run_dir(killed, t)))
        assert (run_dir(two, t) / "eval.csv").read_text() == (run_dir(killed, t) / "eval.csv").read_text()


def test_a_packed_rl_cell_through_ray_writes_each_seeds_folder(ray_local, hopper_file, tmp_path, capsys):
    spec = load_spec(_rl_pack_spec(tmp_path, hopper_file))
    out = tmp_path / "out"
    summary = run_sweep(spec, out)
    assert summary["errors"] == {} and len(summary["started"]) == 3
    said = capsys.readouterr().out
    assert "1 trials, 1 CPU each" in said and "done  td3bc__tiny-hopper__s0+1+2 step 50" in said
    rows = read_table(out / "results.csv")
    assert sorted((r["trial_id"], r["step"]) for r in rows) == sorted(
        (t["id"], s) for t in spec.trials for s in ("25", "50")
    )
    assert all(trial_status(t, out)[0] == "finished" for t in spec.trials)
    assert main([str(spec.path), "--out", str(out)]) == 0  # and a rerun skips them
    assert "3 finished (skipped)" in capsys.readouterr().out
