"""Training: plan the config, read and encode the data, build the model, optimise, evaluate.

One module per responsibility:

- :mod:`~rankengine.train.loop`: :func:`train` and the :class:`Trainer` (epochs, steps);
- :mod:`~rankengine.train.splits`: the train / valid / test splits;
- :mod:`~rankengine.train.data`: fitting the features and encoding the splits (in memory,
  cached or streamed);
- :mod:`~rankengine.train.objective`: per-task losses on the rows each task is trained on;
- :mod:`~rankengine.train.evaluation`: a split's loss and metrics, gate statistics;
- :mod:`~rankengine.train.stopping`: early stopping;
- :mod:`~rankengine.train.checkpoints`: the checkpoint policy and resuming;
- :mod:`~rankengine.train.checks`: what is checked before any data is read.
"""

from rankengine.bundle import TrainContext, TrainResult
from rankengine.train.checks import check_buildable, check_saved_config
from rankengine.train.loop import Trainer, seed_everything, train
from rankengine.train.objective import Objective
from rankengine.train.splits import read_splits, split_table
from rankengine.train.stopping import EarlyStopper

__all__ = ["EarlyStopper", "Objective", "TrainContext", "TrainResult", "Trainer",
           "check_buildable", "check_saved_config", "read_splits", "seed_everything",
           "split_table", "train"]
