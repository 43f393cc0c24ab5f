"""VAE self-supervised pretraining (the paper's first stage).

Default: a small ConvNeXt encoder at 64 px on the embedded DermaMNIST subset; finishes on
a 2-core laptop CPU in a few minutes.
  python -m derm_jax.main --config=configs/vae.py --workdir=/tmp/vae
Paper scale (ConvNeXt-Tiny encoder, 224 px, full DermaMNIST):
  python -m derm_jax.main --config=configs/vae.py:paper --workdir=DIR \
      --config.data.source=npz --config.data.npz_path=/path/to/dermamnist.npz
Where to change things: latent size `model.latent_dim`, encoder `model.backbone`,
augmentation `aug.*`, loss `loss.*`.
"""

from ml_collections import ConfigDict

from derm_jax import config_lib


def get_config(arg: str | None = None) -> ConfigDict:
  c = ConfigDict()
  c.task = "vae"
  c.seed = 0
  c.dtype = "float32"          # compute dtype: 'float32' or 'bfloat16' (mixed precision)
  c.data = config_lib.data()
  c.image_size = 64            # model input resolution
  c.aug = config_lib.augmentation()

  c.model = ConfigDict()
  c.model.backbone = "convnext_nano_cpu"   # any name in derm_jax.models.registry.available()
  c.model.backbone_kwargs = ConfigDict()
  c.model.latent_dim = 128
  c.model.decoder_widths = (128, 64, 32, 16)  # one 2x upsampling block each

  c.loss = ConfigDict()
  c.loss.recon = "gaussian"    # 'gaussian' (MSE) or 'l1'
  c.loss.sigma = 0.1           # std of the Gaussian decoder
  c.loss.l1_scale = 0.1        # scale of the Laplace decoder
  c.loss.beta = 1.0
  c.loss.kl_warmup_steps = 200
  c.loss.free_bits = 0.0       # nats per latent dimension

  c.optimizer = config_lib.optimizer(lr=2e-3, weight_decay=0.05)
  c.batch_size = 64
  c.eval_batch_size = 128
  c.num_epochs = 12
  c.total_steps = 0            # > 0 overrides num_epochs
  c.input = config_lib.input_options()

  c.log_every_steps = 10
  c.eval_every_epochs = 1.0
  c.checkpoint_every_steps = 0  # 0 = every epoch
  c.profile_steps = ()          # (first, last): jax.profiler trace of those steps in DIR/profile
  c.stop_after_step = 0         # > 0: checkpoint and exit after this step (a job chunk); rerun resumes
  c.steps_per_dispatch = 0      # steps per device call; 0 = to the next log/eval/ckpt (1 on CPU)
  c.keep_checkpoints = 3
  c.num_image_samples = 8

  if arg == "paper":
    c.data.source = "download"
    c.data.size = 224
    c.image_size = 224
    c.model.backbone = "convnext_tiny"
    c.model.latent_dim = 256
    c.model.decoder_widths = (512, 256, 128, 64, 32)
    c.batch_size = 32
    c.eval_batch_size = 64
    c.num_epochs = 50
    c.optimizer.lr = 5e-4
    c.loss.kl_warmup_steps = 2000
    c.log_every_steps = 50
  elif arg not in (None, ""):
    raise ValueError(f"Unknown configs/vae.py preset {arg!r}; use configs/vae.py or "
                     f"configs/vae.py:paper.")
  return c
