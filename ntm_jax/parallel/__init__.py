"""Running at scale: the device mesh and its logical-axis rules (mesh.py), checkpoints of a run
(checkpoint.py) and ahead-of-time compilation for TPU topologies (compile.py)."""
