"""Training: configs (round trip, overrides, unknown keys), exact resume, run-directory ownership, NaN reporting,
the CLI, and a slow learning test."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_same_state

from rl._safe_load import load_torch_file
from rl.agents import ALGOS, TrainConfig, config_class, train_config
from rl.config import (
    ConfigError,
    RunConfig,
    apply_overrides,
    load_yaml,
    save_yaml,
    to_dict,
)
from rl.data import OfflineDataset
from rl.train import RunDirError, Trainer, TrainingError, build_config, main

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
TINY = {"hidden_q": (8, 8), "hidden_pi": (8, 8), "batch_size": 8, "final_eval": False, "eval_every": 0}


def tiny_dataset(n: int = 64, do: int = 4, da: int = 2, seed: int = 0) -> OfflineDataset:
    rng = np.random.default_rng(seed)
    obs = rng.normal(size=(n + 1, do)).astype(np.float32)
    terminals = np.zeros(n, bool)
    terminals[[20, 45]] = True
    timeouts = np.zeros(n, bool)
    timeouts[-1] = True
    return OfflineDataset(
        observations=obs[:-1],
        actions=rng.uniform(-1, 1, size=(n, da)).astype(np.float32),
        rewards=rng.normal(size=n).astype(np.float32),
        next_observations=obs[1:],
        terminals=terminals,
        timeouts=timeouts,
        metadata={"env_id": None},
    )


def mi_cfg(tmp: Path, **kw):
    opts = {"n_negatives": 4, "estimator_options": {"n_samples": 3}, "run_dir": str(tmp), **TINY, **kw}
    return train_config("mi", **opts)


# --- configs ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("algo", sorted(set(ALGOS) - {"misa"}))
def test_config_round_trip(tmp_path, algo):
    cfg = train_config(
        algo, steps=123, hidden_q=(4, 5), seed=7, imports=("my_bounds", "lib/more.py"), progress=True
    )
    save_yaml(cfg, tmp_path / "c.yaml")
    back = TrainConfig.from_dict(load_yaml(tmp_path / "c.yaml"))
    assert back == cfg and to_dict(back) == to_dict(cfg)


def test_shipped_configs_load_and_state_defaults():
    files = sorted(CONFIGS.glob("*/*.yaml"))
    names = {f"{p.parent.name}/{p.name}" for p in files}
    for algo in ("misa", "cql", "iql", "td3bc", "bc"):
        assert f"{algo}/hopper-medium-v5.yaml" in names
    assert {"misa/walker2d-medium-v5.yaml", "misa/halfcheetah-medium-v5.yaml"} <= names
    for p in files:
        cfg = build_config(p, {})
        assert cfg.run.steps == 1_000_000
    misa = build_config(CONFIGS / "misa/hopper-medium-v5.yaml", {})
    assert (
        misa.agent.estimator,
        misa.agent.critic_weight,
        misa.agent.bc_weight,
        misa.agent.ub_weight,
        misa.agent.n_negatives,
    ) == (
        "misa",
        5.0,
        0.5,
        0.1,
        50,
    )
    assert (
        misa.agent.lr_pi,
        misa.agent.lr_q,
        misa.agent.lr_alpha,
        misa.agent.q_activation,
        misa.agent.log_std_mode,
    ) == (
        1e-4,
        3e-4,
        1e-4,
        "elu",
        "misa",
    )


def test_overrides_and_unknown_keys(tmp_path):
    path = CONFIGS / "misa/hopper-medium-v5.yaml"
    cfg = build_config(
        path,
        {
            "estimator": "nwj",
            "steps": "5000",
            "run-dir": "X",
            "hidden-q": "[8, 8]",
            "estimator-options.sampler": "mala",
            "device": "cuda",
            "dataset-size": "1000",
        },
    )
    assert (
        cfg.agent.estimator,
        cfg.run.steps,
        cfg.run.run_dir,
        cfg.agent.hidden_q,
        cfg.run.device,
        cfg.run.dataset_size,
    ) == (
        "nwj",
        5000,
        "X",
        (8, 8),
        "cuda",
        1000,
    )
    assert cfg.agent.estimator_options == {"sampler": "mala"}
    with pytest.raises(ConfigError, match="--stepz"):
        build_config(path, {"stepz": "3"})
    with pytest.raises(ConfigError, match="steps must be an integer"):
        build_config(path, {"steps": "many"})
    bad = tmp_path / "bad.yaml"
    bad.write_text("algo: cql\nlearning_rate: 0.1\n")
    with pytest.raises(ConfigError, match="unknown key 'learning_rate'"):
        build_config(bad, {})
    with pytest.raises(ConfigError, match="unknown algo 'ppo'"):
        build_config(None, {}, algo="ppo")
    assert apply_overrides({}, {"seed": "3"}, ["seed"]) == {"seed": 3}


def test_run_settings_and_algorithm_settings_are_apart(tmp_path):
    """Every key belongs to one part; an agent is built from its own config, seeded and placed by the run."""
    from dataclasses import fields

    from rl.agents import IQLAgent, IQLConfig, TrainConfig, config_class, make_agent

    run_keys = {f.name for f in fields(RunConfig)}
    for algo in sorted(ALGOS):
        agent_keys = {f.name for f in fields(config_class(algo))}
        assert not run_keys & agent_keys, (algo, run_keys & agent_keys)
    assert TrainConfig("mi").run.seed == 42 and TrainConfig("iql").run.seed == 0  # MISA's RUN_DEFAULTS
    flat = train_config("iql", steps=7, beta=1.5, seed=3)
    nested = TrainConfig.from_dict({"algo": "iql", "run": {"steps": 7, "seed": 3}, "agent": {"beta": 1.5}})
    assert flat == nested and (flat.run.steps, flat.agent.beta) == (7, 1.5)
    assert flat.replace(beta=2.0, steps=9) == train_config("iql", steps=9, beta=2.0, seed=3)
    save_yaml(nested, tmp_path / "c.yaml")  # written flat, read back equal
    assert "run:" not in (tmp_path / "c.yaml").read_text()
    assert TrainConfig.from_dict(load_yaml(tmp_path / "c.yaml")) == nested
    one = IQLAgent(11, 3, IQLConfig(beta=1.5), seed=3, total_steps=7)
    two = make_agent(flat, 11, 3)
    assert_same_state(one.state_dict(), two.state_dict())
    with pytest.raises(ValueError, match="cosine schedule runs over the run's updates: pass total_steps"):
        IQLAgent(11, 3, IQLConfig())
    with pytest.raises(TypeError, match="IQLAgent needs a IQLConfig; got TD3BCConfig"):
        IQLAgent(11, 3, config_class("td3bc")(), total_steps=5)
    for data, needle in (
        (
            {"algo": "iql", "run": {"beta": 1.0}},
            r"run\.beta is not one of the run settings; it belongs in agent:",
        ),
        (
            {"algo": "iql", "agent": {"steps": 1}},
            r"agent\.steps is not one of the agent settings; it belongs in run:",
        ),
        ({"algo": "iql", "steps": 5, "run": {"steps": 6}}, r"steps is given twice"),
        (
            {"algo": "iql", "run_dir": "${oc.env:HOME}"},
            r"RunConfig\.run_dir = .*no \$\{\.\.\.\} interpolation",
        ),
        (
            {"algo": "iql", "hidden_q": [8, "x"]},
            r"IQLConfig\.hidden_q must be a list \(an integer each\); got \[8, 'x'\]",
        ),
        ({"algo": "iql", "steps": 2.5}, r"RunConfig\.steps must be an integer; got 2\.5"),
        ({"algo": "iql", "threads": "two"}, r"RunConfig\.threads must be an integer or null; got 'two'"),
    ):
        with pytest.raises(ConfigError, match=needle):
            TrainConfig.from_dict(data)
    assert TrainConfig.from_dict({"algo": "iql", "steps": 1e3, "hidden_q": [8.0, 8]}).run.steps == 1000


def test_unknown_estimator_fails_before_training(tmp_path):
    with pytest.raises(ValueError, match="unknown estimator 'mutual'"):
        Trainer(mi_cfg(tmp_path, estimator="mutual"), dataset=tiny_dataset(), quiet=True)


# --- resume, run dirs, NaN ----------------------------------------------------------------------------------
def _state(trainer: Trainer) -> dict:
    return trainer.agent.state_dict()


@pytest.mark.parametrize("algo", ["mi", "iql", "td3bc"])
def test_resume_is_exact(tmp_path, algo):
    ds = tiny_dataset()
    extra = {"n_negatives": 4, "estimator_options": {"n_samples": 3}} if algo == "mi" else {}

    def cfg(d):
        return train_config(algo, **TINY, **extra, steps=6, log_every=2, checkpoint_every=3, run_dir=str(d))

    straight = Trainer(cfg(tmp_path / "a"), dataset=ds, quiet=True)
    straight.train()
    half = Trainer(cfg(tmp_path / "b"), dataset=ds, quiet=True)
    half.train(until=3)
    del half  # a new process state: everything comes back from the checkpoint
    torch.manual_seed(1234)  # disturb the global RNG: resume must restore it
    resumed = Trainer(cfg(tmp_path / "b"), dataset=ds, resume=True, quiet=True)
    assert resumed.step == 3
    resumed.train()
    assert_same_state(_state(straight), _state(resumed))
    a = (tmp_path / "a" / "progress.csv").read_text()
    b = (tmp_path / "b" / "progress.csv").read_text()
    strip = lambda t: [line.rsplit(",", 1)[0] for line in t.splitlines()]  # noqa: E731 (drop the timing column)
    assert strip(a) == strip(b)


def test_the_global_numpy_and_python_generators_follow_the_seed_and_resume(tmp_path):
    import random

    ds = tiny_dataset()

    def cfg(seed: int, name: str):
        return train_config(
            "bc", **TINY, steps=4, checkpoint_every=2, seed=seed, run_dir=str(tmp_path / name)
        )

    def draw() -> tuple[float, float]:
        return np.random.rand(), random.random()  # noqa: NPY002 - what a user's code would draw

    firsts = {}
    for seed, name in ((5, "a"), (5, "b"), (6, "c")):
        with Trainer(cfg(seed, name), dataset=ds, quiet=True) as trainer:
            firsts[name] = draw()  # before the checkpoint at step 2: its states are one draw on
            trainer.train(until=2)
    assert firsts["a"] == firsts["b"] != firsts["c"]
    np.random.seed(5)  # noqa: NPY002 - the seed's stream, two draws in
    random.seed(5)
    draw()
    second = draw()
    with Trainer(cfg(5, "a"), dataset=ds, resume=True, quiet=True):
        assert draw() == second  # the checkpoint's states, not the seed's again


def test_run_dir_not_ours_is_never_overwritten(tmp_path):
    (tmp_path / "notes.txt").write_text("precious")
    with pytest.raises(RunDirError, match="not from rl.train"):
        Trainer(mi_cfg(tmp_path), dataset=tiny_dataset(), quiet=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
    run = tmp_path / "run"
    Trainer(mi_cfg(run, steps=2), dataset=tiny_dataset(), quiet=True).train()
    with pytest.raises(RunDirError, match="--resume"):
        Trainer(mi_cfg(run, steps=2), dataset=tiny_dataset(), quiet=True)


class NaNAt:
    """Wraps a dataset; the `at`-th sampled batch gets a NaN reward."""

    def __init__(self, ds, at: int) -> None:
        self.ds, self.at, self.calls = ds, at, 0
        self.obs_dim, self.act_dim, self.metadata = ds.obs_dim, ds.act_dim, ds.metadata
        self.observations, self.actions, self.episode_returns = (
            ds.observations,
            ds.actions,
            ds.episode_returns,
        )

    def sample(self, *args, **kwargs):
        self.calls += 1
        batch = dict(self.ds.sample(*args, **kwargs))
        if self.calls == self.at:
            batch["rewards"] = batch["rewards"].clone()
            batch["rewards"][1] = float("nan")
        return batch


def test_nan_batch_names_step_and_term_and_keeps_last_checkpoint(tmp_path):
    cfg = mi_cfg(tmp_path, steps=10, checkpoint_every=2)
    trainer = Trainer(cfg, dataset=NaNAt(tiny_dataset(), at=5), quiet=True)
    with pytest.raises(TrainingError, match=r"step 5: .*is nan.*'rewards'.*row 1.*step 4"):
        trainer.train()
    blob = load_torch_file(tmp_path / "checkpoint.pt")
    assert blob["step"] == 4
    assert all(torch.isfinite(p).all() for p in blob["agent"]["modules"]["critic"].values())


def test_failure_names_the_step_the_checkpoint_holds(tmp_path):
    # the run fails two steps after its last checkpoint: the message names the checkpoint's step, not the last
    # good update's
    cfg = mi_cfg(tmp_path, steps=10, checkpoint_every=4)
    trainer = Trainer(cfg, dataset=NaNAt(tiny_dataset(), at=7), quiet=True)
    with pytest.raises(
        TrainingError, match=r"step 7: .*is nan.*last good checkpoint: .*checkpoint.pt \(step 4\)"
    ):
        trainer.train()
    assert load_torch_file(tmp_path / "checkpoint.pt")["step"] == 4
    resumed = Trainer(cfg, dataset=NaNAt(tiny_dataset(), at=3), resume=True, quiet=True)
    # resumed at 4, it fails on its third batch
    with pytest.raises(TrainingError, match=r"step 7: .*\(step 4\)"):
        resumed.train()


def test_diverging_loss_is_named(tmp_path):
    cfg = mi_cfg(tmp_path, steps=3, max_abs_loss=1e-9)
    with pytest.raises(TrainingError, match=r"step 1: term 'critic_td' diverged"):
        Trainer(cfg, dataset=tiny_dataset(), quiet=True).train()


def test_cli_trains_from_an_hdf5_file(tmp_path, capsys):
    path = tmp_path / "tiny.hdf5"
    tiny_dataset().to_hdf5(path)
    run = tmp_path / "run"
    argv = [
        "--algo",
        "bc",
        "--dataset",
        str(path),
        "--steps",
        "4",
        "--run-dir",
        str(run),
        "--batch-size",
        "8",
        "--final-eval",
        "false",
        "--eval-every",
        "0",
        "--hidden-pi",
        "[8]",
        "--quiet",
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "done: 4 steps" in out and str(run) in out
    assert f"no evaluation (no env for {str(path)!r})" in out  # a bare file names no env
    # with an env, the summary says why nothing was evaluated
    assert main([*argv[:7], str(tmp_path / "run-env"), *argv[8:], "--env", "Hopper-v5"]) == 0
    assert "no evaluation (final_eval is off and no step reached eval_every (0))" in capsys.readouterr().out
    assert (run / "checkpoint.pt").exists() and (run / "progress.csv").exists() and (run / "tb").is_dir()
    assert main(argv) == 2  # the run exists: needs --resume
    assert main([*argv, "--resume"]) == 0
    assert main(["--algo", "bc", "--nope", "1"]) == 2
    assert "--nope" in capsys.readouterr().err


# --- learning ------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_bc_on_expert_data_beats_random(tmp_path):
    from rl.collect.generate import load_or_make

    ds = load_or_make("hopper-expert-v5", size=20_000, root=tmp_path / "data", progress=False)
    cfg = train_config(
        "bc",
        dataset="hopper-expert-v5",
        steps=3000,
        eval_every=0,
        eval_episodes=5,
        run_dir=str(tmp_path / "run"),
        log_every=500,
    )
    trainer = Trainer(cfg, dataset=ds, quiet=True)
    rec = trainer.train()
    from rl.evaluation import evaluate

    class Random:
        def act(self, obs, deterministic=True, generator=None):
            return np.random.default_rng(0).uniform(-1, 1, size=(len(obs), 3)).astype(np.float32)

    random_return = float(evaluate(Random(), "Hopper-v5", 5).mean())
    assert rec["return_mean"] > random_return + 800, (rec, random_return)


def test_behaviour_score_is_the_datasets_normalised_mean_return(tmp_path, capsys):
    """The main job's verdict compares the agent with the behaviour data, normalised the same way."""
    from rl.data.references import normalized_score

    ds = tiny_dataset(do=11, da=3).replace(metadata={"env_id": "Hopper-v5"})
    returns = ds.episode_returns()
    assert returns.size == 3  # episodes end at the terminals 20 and 45 and the final timeout
    trainer = Trainer(
        train_config("bc", **{**TINY, "run_dir": str(tmp_path / "r"), "steps": 1}), ds, quiet=True
    )
    expected = normalized_score("Hopper-v5", float(returns.mean()))
    assert trainer.behaviour_score() == pytest.approx(expected)
    cfg = train_config("bc", **{**TINY, "run_dir": str(tmp_path / "n"), "steps": 1, "dataset": "mine.hdf5"})
    no_env = Trainer(cfg, tiny_dataset(), quiet=True)
    assert no_env.behaviour_score() is None


def test_help_lists_every_config_field_with_type_default_and_meaning(capsys):
    from dataclasses import fields

    for algo in sorted(set(ALGOS) - {"misa"}):
        with pytest.raises(SystemExit) as e:
            main(["--algo", algo, "--help"])
        assert e.value.code == 0
        out = capsys.readouterr().out.split("config fields", 1)[1]
        assert f"run settings (RunConfig; the defaults of --algo {algo})" in out
        for f in [*fields(RunConfig), *fields(config_class(algo))]:
            line = next(ln for ln in out.splitlines() if ln.startswith(f"  --{f.name.replace('_', '-')} "))
            assert "(default " in line and line.split("): ", 1)[1], line  # a type, a default and a meaning
    assert "--dataset-size int | None (default null): transitions to generate" in out


def test_help_gives_each_field_its_own_meaning(capsys):
    for algo in sorted(set(ALGOS) - {"misa"}):
        with pytest.raises(SystemExit):
            main(["--algo", algo, "--help"])
        out = capsys.readouterr().out.split("config fields", 1)[1]
        meanings = {}
        for line in out.splitlines():
            if line.startswith("  --"):
                meanings.setdefault(line.split("): ", 1)[1], []).append(line.split()[0])
        shared = {text: names for text, names in meanings.items() if len(names) > 1}
        assert not shared, (algo, shared)
    for needle in (
        "--hidden-q tuple[int, ...] (default [256, 256]): hidden layer widths of each Q network",
        "--hidden-pi tuple[int, ...] (default [256, 256]): hidden layer widths of the policy network",
        "--eval-every int (default 10000): steps between evaluations",
        "--eval-episodes int (default 10): episodes per evaluation",
        "--eval-seed int (default 1000000): episode i of an evaluation resets the env with seed",
        "--lr-q float (default 0.0003): Adam learning rate of the critic",
        "--lr-pi float (default 0.0003): Adam learning rate of the policy",
        "--lr-alpha float (default 0.0003): Adam learning rate of the entropy temperature",
    ):
        assert needle in out, needle


# --- custom estimators from the user's modules ----------------------------------------------------------------------
BOUND_MODULE = """
import mi_estimators as mie
from mi_estimators import logmeanexp


@mie.register({name!r})
def tempered_dv(s, temperature: float = 1.0):
    t = 1.0 / temperature
    return (t * s.positive).mean() - logmeanexp(t * s.negative)
"""


@pytest.fixture
def user_modules(tmp_path, monkeypatch):
    """A temp dir as the current directory, with the registry and the imported modules restored afterwards."""
    import mi_estimators as mie

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    names = set(mie.available())
    yield tmp_path
    for name in set(mie.available()) - names:
        mie.unregister(name)
    for mod, m in list(sys.modules.items()):  # the test's own modules only (torch imports submodules lazily)
        if str(getattr(m, "__file__", None) or "").startswith(str(tmp_path)):
            del sys.modules[mod]


def test_import_makes_a_custom_estimator_usable_by_name(user_modules, capsys):
    import mi_estimators as mie

    (user_modules / "my_bounds_t32.py").write_text(BOUND_MODULE.format(name="tempered-dv-t32"))
    (user_modules / "lib").mkdir()
    (user_modules / "lib" / "more_bounds_t32.py").write_text(BOUND_MODULE.format(name="more-dv-t32"))
    tiny_dataset().to_hdf5(user_modules / "d.hdf5")
    common = ["--algo", "mi", "--dataset", "d.hdf5", "--steps", "3", "--batch-size", "8", "--hidden-q", "[8]"]
    common += [
        "--hidden-pi",
        "[8]",
        "--n-negatives",
        "4",
        "--eval-every",
        "0",
        "--final-eval",
        "false",
        "--quiet",
    ]
    assert main([*common, "--run-dir", "run", "--estimator", "tempered-dv-t32"]) == 2
    assert "unknown estimator 'tempered-dv-t32'" in capsys.readouterr().err
    assert not (user_modules / "run").exists()
    argv = [*common, "--run-dir", "run", "--estimator", "tempered-dv-t32", "--import", "my_bounds_t32"]
    assert main([*argv, "--import", "lib/more_bounds_t32.py", "--import", "my_bounds_t32"]) == 0, (
        capsys.readouterr()
    )
    saved = load_yaml(user_modules / "run" / "config.yaml")
    assert (
        saved["imports"] == ["my_bounds_t32", "lib/more_bounds_t32.py"]
        and saved["estimator"] == "tempered-dv-t32"
    )
    assert "more-dv-t32" in mie.available()
    # a resume takes the imports from the run's config: a new process (here: the registry emptied) finds them again
    for name in ("tempered-dv-t32", "more-dv-t32"):
        mie.unregister(name)
    for mod in ("my_bounds_t32", "more_bounds_t32"):
        del sys.modules[mod]
    assert main(["--resume", "--run-dir", "run", "--steps", "5", "--quiet"]) == 0, capsys.readouterr().err
    assert load_torch_file(user_modules / "run" / "checkpoint.pt")["step"] == 5
    # a path to a .py file, in the YAML config
    (user_modules / "c.yaml").write_text(
        "algo: mi\nestimator: more-dv-t32\nimports: [lib/more_bounds_t32.py]\n"
    )
    assert main(["--config", "c.yaml", *common[2:], "--run-dir", "run2"]) == 0, capsys.readouterr().err
    assert load_yaml(user_modules / "run2" / "config.yaml")["imports"] == ["lib/more_bounds_t32.py"]


def test_plugins_of_installed_packages_are_loaded_when_a_name_is_missing(tmp_path, monkeypatch, user_modules):
    import importlib.metadata

    import mi_estimators as mie
    import rl.plugins

    (user_modules / "plugin_pkg_t32.py").write_text(BOUND_MODULE.format(name="plugin-dv-t32"))
    monkeypatch.syspath_prepend(str(user_modules))  # where an installed package would be
    ep = importlib.metadata.EntryPoint(name="t32", value="plugin_pkg_t32", group=rl.plugins.ENTRY_POINT_GROUP)
    calls = []

    def entry_points(group):
        calls.append(group)
        return [ep] if group == rl.plugins.ENTRY_POINT_GROUP else []

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)
    monkeypatch.setattr(rl.plugins, "_plugins_loaded", None)
    Trainer(
        mi_cfg(tmp_path / "builtin", estimator="nwj", estimator_options={}),
        dataset=tiny_dataset(),
        quiet=True,
        claim=False,
    )
    assert calls == []  # a registered name needs no plugin
    trainer = Trainer(
        mi_cfg(tmp_path / "r", estimator="plugin-dv-t32", estimator_options={}),
        dataset=tiny_dataset(),
        quiet=True,
    )
    trainer.train(until=1)
    trainer.close()
    assert calls == [rl.plugins.ENTRY_POINT_GROUP] and "plugin-dv-t32" in mie.available()
    monkeypatch.setattr(rl.plugins, "_plugins_loaded", None)
    broken = importlib.metadata.EntryPoint(name="bad", value="no_such_plugin_t32", group=ep.group)
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: [broken])
    with pytest.raises(ConfigError, match=r"estimator plugin 'bad' .*no_such_plugin_t32.*failed to load"):
        Trainer(
            mi_cfg(tmp_path / "r2", estimator="other-t32", estimator_options={}),
            dataset=tiny_dataset(),
            quiet=True,
        )


# --- progress bar -----------------------------------------------------------------------------------------------
def test_progress_bar_only_on_a_terminal_unless_asked(tmp_path, capsys, monkeypatch):
    def bar_shown(quiet: bool = False, **kw) -> bool:
        d = tmp_path / str(len(list(tmp_path.iterdir())))
        cfg = train_config("bc", **{**TINY, "run_dir": str(d), "steps": 3, **kw})
        with Trainer(cfg, tiny_dataset(), quiet=quiet) as trainer:
            trainer.train()
        return "3/3" in capsys.readouterr().err

    assert not bar_shown()  # stderr is pytest's capture, not a terminal
    assert bar_shown(progress=True) and not bar_shown(progress=True, quiet=True)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert bar_shown() and not bar_shown(progress=False)
