"""Data-parallel placement helpers: shardings, replication, batch sharding, state sizes.

The data-parallel *transforms* (`cross_replica_mean`, `zero1`, `zero1_shardings`,
`elastic_averaging`, `periodic_average`, `stale_gradients`) are `gx.X`; this module holds the
helpers that place arrays on a mesh, and the states of the parallel transforms.
"""

from gradxform._parallel.easgd import ElasticState
from gradxform._parallel.local_sgd import PeriodicAverageState
from gradxform._parallel.sharding import replicate, shard_batch, shardings, specs
from gradxform._parallel.stale import StaleState
from gradxform._parallel.zero import state_bytes_per_device, zero1_spec

__all__ = [
    "ElasticState", "PeriodicAverageState", "StaleState", "replicate", "shard_batch",
    "shardings", "specs", "state_bytes_per_device", "zero1_spec",
]
