"""The XLA flags of every test process: conftest sets them, and a test that starts a one-device process passes
`FAST_COMPILE` on. Nothing here imports jax (conftest reads it before jax is imported)."""

# The tests compile hundreds of tiny programs whose run time is negligible beside their compile time: LLVM's
# optimisation passes cost more than they save there (a cold run of the remat, tarflow and resume tests took
# 1.3-1.5x less time without them). A user's run keeps XLA's default.
FAST_COMPILE = "--xla_backend_optimization_level=0"
EIGHT_DEVICES = f"--xla_force_host_platform_device_count=8 {FAST_COMPILE}"
