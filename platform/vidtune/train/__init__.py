"""Training: DeepSpeed configs, the per-worker loop (Ray Train, torchrun or a plain process)."""
