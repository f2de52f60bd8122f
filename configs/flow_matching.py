"""Flow matching on the embedded digits (D9): the trajectory predictor's backbone as a velocity network.

It is the few-step baseline of the fine-tuning table and the model an NTM is initialised from
(configs/finetune.py). Everything but the model section is configs/digits.py's.
COMMAND:
  python -m ntm_jax.main --config=configs/flow_matching.py --workdir=workdirs/fm_digits
Samples with T steps on NTM's grid (sample.num_steps, default model.grid.num_steps = 4):
  ... --mode=sample --config.sample.sampler=euler        (deterministic Euler, the default)
  ... --mode=sample --config.sample.sampler=ancestral    (the Gaussian posterior of C.3, DDPM-style)
Held-out bits/dim (--mode=eval) are the exact bounds of the ancestral Gaussian chain at that T.
Arguments: smoke, steps=N.
"""

from ntm_jax.config_args import load_sibling_config, parse_arg


def get_config(arg=None):
  args = parse_arg(arg, smoke=False, steps=0)
  config = load_sibling_config(__file__, "digits", "smoke" if args["smoke"] else None)
  model = config.model
  model.kind = "flow_matching"
  model.transporter.num_blocks = 0  # unused: the model is the predictor backbone alone
  # markov: as the NTM it seeds (a single level attends only to itself either way).
  model.predictor.update(prediction="velocity", markov=True)
  config.sample.sampler = "euler"
  if not args["smoke"]:
    config.train.update(num_steps=args["steps"] or 1500, eval_every=250, checkpoint_every=500)
  elif args["steps"]:
    config.train.num_steps = args["steps"]
  return config
