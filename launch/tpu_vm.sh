#!/usr/bin/env bash
# Runs `python -m ntm_jax.main` on every worker of a TPU VM (single- or multi-host) with gcloud.
#
#   launch/tpu_vm.sh --tpu NAME --zone ZONE --config CONFIG --workdir gs://BUCKET/DIR
#                    [--project P] [--repo-dir DIR_ON_WORKERS] [--setup] [--dry-run] [-- EXTRA_MAIN_FLAGS...]
#
# --setup first copies this checkout to the workers and runs launch/setup_tpu_vm.sh there. Every worker runs
# the same command with --distributed, so jax.distributed.initialize() joins the hosts into one job.
# --dry-run prints the commands without running them.
set -euo pipefail
# shellcheck source=launch/libtpu_flags.sh
source "$(dirname "${BASH_SOURCE[0]}")/libtpu_flags.sh"

tpu="" zone="" project="" config="" workdir="" repo_dir="ntm_jax" setup=0 dry_run=0
extra=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --tpu) tpu="$2"; shift 2 ;;
    --zone) zone="$2"; shift 2 ;;
    --project) project="$2"; shift 2 ;;
    --config) config="$2"; shift 2 ;;
    --workdir) workdir="$2"; shift 2 ;;
    --repo-dir) repo_dir="$2"; shift 2 ;;
    --setup) setup=1; shift ;;
    --dry-run) dry_run=1; shift ;;
    --) shift; extra=("$@"); break ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "tpu_vm.sh: unknown argument: $1" >&2; exit 2 ;;
  esac
done
for required in tpu zone config workdir; do
  if [[ -z "${!required}" ]]; then
    echo "tpu_vm.sh: --${required} is required (see --help)" >&2
    exit 2
  fi
done

gcloud_args=(compute tpus tpu-vm)
target=("${tpu}" "--zone=${zone}" "--worker=all")
if [[ -n "${project}" ]]; then target+=("--project=${project}"); fi

main_line=(env "LIBTPU_INIT_ARGS=${NTM_LIBTPU_FLAGS}${LIBTPU_INIT_ARGS:+ ${LIBTPU_INIT_ARGS}}" .venv/bin/python -m ntm_jax.main "--config=${config}" "--workdir=${workdir}" --distributed "${extra[@]}")
printf -v main_command '%q ' "${main_line[@]}"
echo "ntm_jax command on every worker: cd ${repo_dir} && ${main_command}"

run() {
  echo "+ $(printf '%q ' "$@")"
  if [[ "${dry_run}" -eq 0 ]]; then "$@"; fi
}

if [[ "${setup}" -eq 1 ]]; then
  checkout="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
  run gcloud "${gcloud_args[@]}" scp --recurse "${checkout}" "${target[0]}:${repo_dir}" "${target[@]:1}"
  run gcloud "${gcloud_args[@]}" ssh "${target[@]}" --command "bash ${repo_dir}/launch/setup_tpu_vm.sh"
fi
run gcloud "${gcloud_args[@]}" ssh "${target[@]}" --command "cd ${repo_dir} && ${main_command}"
