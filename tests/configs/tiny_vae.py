"""A tiny VAE (seconds per epoch on a CPU) for the test suite: configs/vae.py made small."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "configs"))
import vae


def get_config(arg=None):
  c = vae.get_config()
  c.image_size = 32
  c.model.backbone_kwargs.dims = (16, 32, 48, 64)
  c.model.backbone_kwargs.depths = (1, 1, 1, 1)
  c.model.latent_dim = 16
  c.model.decoder_widths = (32, 16)
  c.batch_size = 16
  c.eval_batch_size = 64
  c.log_every_steps = 2
  c.loss.kl_warmup_steps = 4
  c.num_image_samples = 4
  return c
