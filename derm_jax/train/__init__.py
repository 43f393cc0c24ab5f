"""What every task's training shares: the task interface, the one loop, the population
(members trained side by side as one program), mesh, optimiser, checkpoints, outputs
(TensorBoard, metrics.jsonl, progress), the workdir lock and the compilation cache."""
