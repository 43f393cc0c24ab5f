"""configs/compare.py:ham224 made tiny for the test suite: the HAM10000 sample in
tests/data, lesion-grouped splits, 32 px, a few steps per stage."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "configs"))
import compare


def get_config(arg=None):
  c = compare.get_config("ham224")
  c.data.manual_dir = os.path.join(os.path.dirname(__file__), "..", "data", "ham10000_sample")
  c.data.stored_size = 48
  c.image_size = 32
  c.vae.model.decoder_widths = (32, 16)
  c.vae.model.latent_dim = 16
  c.vae.total_steps = 6
  c.vae.batch_size = 8
  c.vae.eval_batch_size = 8
  c.vae.log_every_steps = 3
  c.vae.num_image_samples = 4
  c.vae.loss.kl_warmup_steps = 4
  c.classifier.batch_size = 8
  c.classifier.eval_batch_size = 8
  c.classifier.num_epochs = 2
  c.classifier.log_every_steps = 3
  c.dino.batch_size = 8
  c.dino.eval_batch_size = 8
  c.dino.head.hidden = 64
  c.dino.head.out_dim = 64
  c.dino.local_size = 32
  return c
