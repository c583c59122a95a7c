"""The run lifecycle: the Trainer and its hooks, training and evaluation jobs, run dirs, checkpoints and resume,
models, launchers, preemption and loggers."""
