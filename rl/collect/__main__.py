"""``python -m rl.collect``: the command line of the dataset factory (`rl.collect.main`)."""

from rl.collect import main

if __name__ == "__main__":
    raise SystemExit(main())
