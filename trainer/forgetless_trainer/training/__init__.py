"""The DeepSpeed trainer: environment and process group (distributed.py), the DeepSpeed config and
learning-rate schedule generated from the spec (config.py), atomic checkpoints (checkpoint.py) and
the training loop (loop.py, `train(job, workdir)`)."""
