"""The sweep runner: one grid of trials on Ray Tune (offline RL, or the MI estimator suite on the staircase), with
exact resume after a kill and its tables and plots. The command is `python -m rl.sweep SPEC` (or `misa-sweep`;
`python benchmarks/sweep.py` in a checkout); see docs/sweeps.md.

One module per job, in the order a sweep uses them:

- `spec`: the YAML spec read and checked (`load_spec`, `SpecError`), the `Spec` and its trials;
- `folders`: a trial's run folder and what its files say (`trial_status`: finished, resume, new, changed);
- `storage`: where trials' files travel (Ray's storage: a path or a URI; checkpoint trees, the mirror into `--out`);
- `trials`: one trial run to its end (`run_trial`; `pack`: a staircase cell's seeds as one trial) and the Tune
  trainable;
- `behaviour`: the behaviour data's score per dataset, cached for the report;
- `driver`: the Ray Tune driver (`run_sweep`, `SweepError`);
- `gather`, `report`, `plots`: the results read back from the folders, the tables, the plots;
- `staircase`: the estimator suite's protocol (`run_protocol`; needs only torch and `mi_estimators`);
- `__main__`: the command line (`main`).

Nothing is imported here, so `rl.sweep.staircase` is importable without the `rl` extra's packages.
"""
