"""Training infrastructure shared by the VAE and classifier trainers (mesh, optimiser, checkpoints, logging)."""
