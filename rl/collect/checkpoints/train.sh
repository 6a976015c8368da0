#!/bin/bash
# How the shipped SAC behaviour policies were trained (seed 0, one CPU thread each). Resume is exact (networks,
# optimisers, replay buffer, RNG and MuJoCo state), so training in stages or in one go gives the same weights:
# each line is equivalent to the manifest's `command` (rl/collect/checkpoints/<Env>.json,
# written when the trainer was `rl.sac`, now `rl.collect.sac`) run without interruption.
# Rerunning the script continues from runs/sac/<Env>/checkpoint.pt; a stage already reached is a no-op.
# (A runs/sac/<Env> folder written before run folders were marked needs its marker first:
# echo '{"tool": "rl.collect.sac"}' > runs/sac/<Env>/.rl-run.json)
set -e
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
common="--seed 0 --eval-every 5000 --checkpoint-every 10000 --resume"
for steps in 50000 120000; do  # session 1: 50k each; session 2: 120k each
  for env in Hopper-v5 Walker2d-v5 HalfCheetah-v5; do
    python -m rl.collect.sac --env $env --steps $steps $common --run-dir runs/sac/$env
  done
done
for steps in 200000 300000; do  # Walker2d learns slower (eval ~500 at 120k, 3188 at 290k)
  python -m rl.collect.sac --env Walker2d-v5 --steps $steps $common --run-dir runs/sac/Walker2d-v5
done
for env in Hopper-v5 Walker2d-v5 HalfCheetah-v5; do
  python -m rl.collect ship --run-dir runs/sac/$env          # picks expert/medium/replay snapshots + manifest
  python -m rl.collect references --env $env --episodes 100  # v5 reference returns
done
python -m rl.collect table  # the tables of docs/datasets.md
