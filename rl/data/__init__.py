"""Offline datasets for the RL layer: the `OfflineDataset` type, its loaders and its exporters.

```python
from rl import data

ds = data.load("hopper-medium-v5")              # the project's own (generated and cached on first use)
ds = data.load("/data/hopper_medium-v2.hdf5")   # a D4RL-format file
ds = data.load("minari:mujoco/hopper/medium-v0", root="~/.minari/datasets")
batch = ds.sample(256, generator=torch.Generator().manual_seed(0))
data.to_hdf5(ds, "out.hdf5"); data.to_minari(ds, "misa/hopper-medium-v5", root="...")
```

h5py, minari and gymnasium are imported only by the functions that need them.
"""

from rl.data.dataset import REQUIRED_D4RL_KEYS, OfflineDataset, from_d4rl_dict
from rl.data.export import minari_root, to_hdf5, to_minari
from rl.data.hdf5 import read_hdf5
from rl.data.load import ACCEPTED_SOURCES, load, read_d4rl
from rl.data.minari_io import from_minari, read_minari

__all__ = [
    "ACCEPTED_SOURCES",
    "REQUIRED_D4RL_KEYS",
    "OfflineDataset",
    "from_d4rl_dict",
    "from_minari",
    "load",
    "minari_root",
    "read_d4rl",
    "read_hdf5",
    "read_minari",
    "to_hdf5",
    "to_minari",
]
