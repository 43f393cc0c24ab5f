"""A small classifier run for the test suite: configs/classify.py at 32 px, few steps."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "configs"))
import classify


def get_config(arg=None):
  c = classify.get_config()
  c.image_size = 32
  c.batch_size = 50
  c.eval_batch_size = 100
  c.num_epochs = 2
  c.log_every_steps = 10
  return c
