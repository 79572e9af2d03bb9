"""cluster: Ray job submission, the Ray Train launcher, Ray-parallel shard building, fault tolerance."""
