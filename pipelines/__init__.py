"""Drivers: the annotation job (Ray, Beam), training, evaluation, review; dataset sources and shard sinks."""
