"""shards: dataset readers, the synthetic fundus generator, WebDataset shard building, verification and stats."""
