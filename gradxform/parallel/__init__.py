"""Data-parallel and multi-process training: transforms over a named axis, sharded state."""

from gradxform.parallel.easgd import ElasticState, elastic_averaging
from gradxform.parallel.local_sgd import PeriodicAverageState, periodic_average
from gradxform.parallel.replica import cross_replica_mean
from gradxform.parallel.sharding import replicate, shard_batch, shardings, specs
from gradxform.parallel.stale import StaleState, stale_gradients
from gradxform.parallel.zero import state_bytes_per_device, zero1, zero1_shardings, zero1_spec

__all__ = [
    "ElasticState", "PeriodicAverageState", "StaleState", "cross_replica_mean",
    "elastic_averaging", "periodic_average", "replicate", "shard_batch", "shardings", "specs",
    "stale_gradients", "state_bytes_per_device", "zero1", "zero1_shardings", "zero1_spec",
]
