"""pretrain: config, model, objectives, data pipeline, DeepSpeed engine, train loop, evaluation, HF export."""
