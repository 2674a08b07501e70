//! The trainer: optimizers (Adam, SGD), gradient clipping, schedules, the training loop and its checkpoints.
