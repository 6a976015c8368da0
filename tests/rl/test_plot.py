"""`rl.plot`: the curves drawn are the logged numbers (means and sample stds over runs), and the CLI's errors."""

from __future__ import annotations

import math

import matplotlib
import pytest

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from test_train import TINY, tiny_dataset  # noqa: E402

from rl.agents import train_config  # noqa: E402
from rl.plot import draw_curves, main, plot_runs, read_run  # noqa: E402
from rl.train import Trainer  # noqa: E402


def _run(tmp_path, name, seed):
    cfg = train_config(
        "bc", **{**TINY, "steps": 6, "log_every": 2, "seed": seed, "run_dir": str(tmp_path / name)}
    )
    Trainer(cfg, tiny_dataset(), quiet=True).train()
    return tmp_path / name


def test_draw_curves_plots_means_and_sample_std_bands():
    fig, ax = plt.subplots()
    draw_curves(ax, {"a": {0: [1.0, 3.0], 10: [2.0, 2.0]}, "b": {0: [5.0]}}, behaviour=4.0, order=["b", "a"])
    lines = {ln.get_label(): ln for ln in ax.lines}
    assert list(lines["a"].get_ydata()) == [2.0, 2.0] and list(lines["a"].get_xdata()) == [0, 10]
    assert list(lines["b"].get_ydata()) == [5.0]
    assert lines["b"].get_color() == "C0" and lines["a"].get_color() == "C1"  # coloured by `order`
    assert list(lines["behaviour data"].get_ydata()) == [4.0, 4.0]
    (band,) = ax.collections  # only "a" has a spread: +-sqrt(2) at step 0, 0 at step 10
    ys = sorted({round(float(v), 6) for v in band.get_paths()[0].vertices[:, 1]})
    assert ys == [round(2 - math.sqrt(2), 6), 2.0, round(2 + math.sqrt(2), 6)]
    plt.close(fig)


def test_plot_runs_reads_the_logs_and_writes_a_png(tmp_path):
    a, b = _run(tmp_path, "a", 0), _run(tmp_path, "b", 1)
    run = read_run(a)
    assert [r["step"] for r in run["progress"]] == [2, 4, 6] and run["config"]["seed"] == 0
    out = plot_runs([a, b], tmp_path / "p.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main([str(a), str(b), "--mean", "--labels", "bc", "--out", str(tmp_path / "m.png")]) == 0
    assert (tmp_path / "m.png").stat().st_size > 1000


def test_plot_errors_name_the_problem(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty"), "--out", str(tmp_path / "x.png")]) == 2
    assert "empty holds no eval.csv" in capsys.readouterr().err
    a = _run(tmp_path, "a", 0)
    with pytest.raises(ValueError, match="labels: got 2, need 1"):
        plot_runs([a], tmp_path / "x.png", labels=["x", "y"])
    assert not (tmp_path / "x.png").exists()
