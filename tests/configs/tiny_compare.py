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
  # The outside set: 35 ISIC 2018 *test* images (not HAM10000). The ISIC 2018 *training*
  # sample is DermaMNIST's own images (5 of its 14 are in the packaged subset's train
  # split): the study must leave those out and say so.
  data = os.path.join(os.path.dirname(__file__), "..", "data")
  c.external = (f"isic2018_test={data}/isic2018_test_dev/ISIC2018_Task3_Test_Input,"
                f"{data}/isic2018_test_dev/ISIC2018_Task3_Test_GroundTruth_35.csv",
                f"isic2018_train_sample={data}/isic2018_sample/ISIC2018_Task3_Training_Input,"
                f"{data}/isic2018_sample/ISIC2018_Task3_Training_GroundTruth.csv")
  return c
