"""What every task's training shares: the loop, the Experiment, mesh, optimiser,
checkpoints, outputs (TensorBoard, metrics.jsonl, progress) and the workdir lock."""
