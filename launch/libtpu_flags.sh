#!/usr/bin/env bash
# libtpu flags for every TPU launch (sourced by tpu_vm.sh and xpk.sh): run the FSDP all-gathers, reduce-scatters
# and all-reduces asynchronously, fused with and overlapped by the compute that does not depend on them.
# A user's own LIBTPU_INIT_ARGS come after these, so they win. tests/compile_test.py checks that this libtpu
# accepts every flag (it aborts on an unknown one) by compiling for a TPU topology with them.
NTM_LIBTPU_FLAGS="--xla_tpu_enable_async_collective_fusion=true \
--xla_tpu_enable_async_collective_fusion_fuse_all_gather=true \
--xla_tpu_enable_async_collective_fusion_multiple_steps=true \
--xla_tpu_overlap_compute_collective_tc=true \
--xla_enable_async_all_gather=true \
--xla_enable_async_all_reduce=true"
export NTM_LIBTPU_FLAGS
