#!/usr/bin/env bash
# Submits `python -m ntm_jax.main` as an xpk workload on a GKE TPU cluster (one or more slices).
#
#   launch/xpk.sh --cluster C --tpu-type v5p-128 --image IMAGE --config CONFIG --workdir gs://BUCKET/DIR
#                 [--num-slices N] [--workload NAME] [--project P] [--zone Z] [--dry-run] [-- EXTRA_MAIN_FLAGS...]
#
# IMAGE is a container with this repository installed (`pip install -c constraints.txt -e ".[tpu]"`).
# Every pod runs the same command with --distributed; with N > 1 slices, set the config's mesh.dcn_* sizes.
# --dry-run prints the xpk command without running it.
set -euo pipefail
# shellcheck source=launch/libtpu_flags.sh
source "$(dirname "${BASH_SOURCE[0]}")/libtpu_flags.sh"

cluster="" tpu_type="" image="" config="" workdir="" num_slices=1 workload="" project="" zone="" dry_run=0
extra=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --cluster) cluster="$2"; shift 2 ;;
    --tpu-type) tpu_type="$2"; shift 2 ;;
    --image) image="$2"; shift 2 ;;
    --config) config="$2"; shift 2 ;;
    --workdir) workdir="$2"; shift 2 ;;
    --num-slices) num_slices="$2"; shift 2 ;;
    --workload) workload="$2"; shift 2 ;;
    --project) project="$2"; shift 2 ;;
    --zone) zone="$2"; shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    --) shift; extra=("$@"); break ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "xpk.sh: unknown argument: $1" >&2; exit 2 ;;
  esac
done
for required in cluster tpu_type image config workdir; do
  if [[ -z "${!required}" ]]; then
    echo "xpk.sh: --${required//_/-} is required (see --help)" >&2
    exit 2
  fi
done
if ! [[ "${num_slices}" =~ ^[1-9][0-9]*$ ]]; then
  echo "xpk.sh: --num-slices must be a positive integer, got ${num_slices}" >&2
  exit 2
fi
workload="${workload:-ntm-$(date +%Y%m%d-%H%M%S)}"

main_line=(env "LIBTPU_INIT_ARGS=${NTM_LIBTPU_FLAGS}${LIBTPU_INIT_ARGS:+ ${LIBTPU_INIT_ARGS}}" python -m ntm_jax.main "--config=${config}" "--workdir=${workdir}" --distributed "${extra[@]}")
printf -v main_command '%q ' "${main_line[@]}"
echo "ntm_jax command in every pod: ${main_command}"

xpk_line=(xpk workload create "--cluster=${cluster}" "--workload=${workload}" "--tpu-type=${tpu_type}"
          "--num-slices=${num_slices}" "--docker-image=${image}" "--command=${main_command}")
if [[ -n "${project}" ]]; then xpk_line+=("--project=${project}"); fi
if [[ -n "${zone}" ]]; then xpk_line+=("--zone=${zone}"); fi
echo "+ $(printf '%q ' "${xpk_line[@]}")"
if [[ "${dry_run}" -eq 0 ]]; then "${xpk_line[@]}"; fi
