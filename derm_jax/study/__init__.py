"""The study: the VAE stage, the arms x seeds, outside sets and the report, in one run."""
