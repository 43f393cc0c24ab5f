"""The whole study in miniature for the test suite: configs/compare.py at 32 px, few steps."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "configs"))
import compare


def get_config(arg=None):
  c = compare.get_config()
  c.image_size = 32
  c.vae.total_steps = 12
  c.vae.batch_size = 16
  c.vae.log_every_steps = 4
  c.vae.model.latent_dim = 16
  c.vae.model.decoder_widths = (32, 16)
  c.vae.num_image_samples = 4
  c.classifier.batch_size = 50
  c.classifier.eval_batch_size = 100
  c.classifier.num_epochs = 2
  c.classifier.log_every_steps = 10
  isic = os.path.join(os.path.dirname(__file__), "..", "data", "isic2018_sample")
  c.external = (f"isic2018={isic}/ISIC2018_Task3_Training_Input,"
                f"{isic}/ISIC2018_Task3_Training_GroundTruth.csv",)
  return c
