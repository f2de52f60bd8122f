"""One process of a simulated multi-host job (run by tests/multihost_test.py; not a test itself).

  python tests/multihost_worker.py PROCESS_ID NUM_PROCESSES PORT OUT_JSON

Each process owns 8 / NUM_PROCESSES CPU devices, joins the job with jax.distributed, builds the sharded
train state on the global fsdp=8 mesh, feeds only its own rows of each global batch, and runs two steps;
process 0 writes the losses and a checksum of the parameters.
"""

import json
import os
import sys

process_id, num_processes, port, out_path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={8 // num_processes}"
os.environ["JAX_PLATFORMS"] = "cpu"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

jax.config.update("jax_cpu_collectives_implementation", "gloo")
if num_processes > 1:
  jax.distributed.initialize(f"localhost:{port}", num_processes=num_processes, process_id=process_id)

import numpy as np  # noqa: E402

from ntm_jax.parallel import mesh as sharding  # noqa: E402
from ntm_jax.training import train  # noqa: E402
from tests.config_test import load_config  # noqa: E402
from tests.sharding_test import batch_of  # noqa: E402

config = load_config("digits", "smoke,conditional")
config.mesh.update({"data": 1, "fsdp": 8})
mesh = sharding.make_mesh(config.mesh.to_dict())
setup = train.build_training(config, mesh)
rows = config.data.batch_size // num_processes  # this process's devices hold these rows of the batch
state, losses = setup.state, []
with sharding.use(mesh):
  for step in range(2):
    local = {k: v[process_id * rows:(process_id + 1) * rows] for k, v in batch_of(config, step).items()}
    batch = {k: jax.make_array_from_process_local_data(setup.batch_sharding, v) for k, v in local.items()}
    state, metrics = setup.step_fn(state, batch, jax.random.key(0))
    losses.append(float(metrics["loss"]))
  # Replicate the parameters so every process can read them (the gather is a collective: all take part).
  params = jax.jit(lambda p: p, out_shardings=jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))(
      state["params"])
checksum = float(sum(np.abs(np.asarray(x, np.float64)).sum() for x in jax.tree.leaves(params)))
if process_id == 0:
  with open(out_path, "w") as f:
    json.dump({"losses": losses, "checksum": checksum, "process_count": jax.process_count(),
               "device_count": jax.device_count()}, f)
