"""Training: the train loop and its jitted step, the state, the optimiser, progress and metrics, the
distillation of the light denoiser, fine-tuning from flow matching, and ahead-of-time compilation."""
