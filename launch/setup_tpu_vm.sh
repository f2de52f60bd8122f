#!/usr/bin/env bash
# Idempotent setup of one TPU-VM worker: a virtualenv with ntm_jax and libtpu, checked by listing the chips.
# Run it on every worker, e.g. through launch/tpu_vm.sh --setup. Re-running skips what is already there.
#
#   launch/setup_tpu_vm.sh [--repo-dir DIR] [--dry-run]
set -euo pipefail

repo_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dry_run=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --repo-dir) repo_dir="$2"; shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    -h|--help) sed -n '2,6p' "$0"; exit 0 ;;
    *) echo "setup_tpu_vm.sh: unknown argument: $1" >&2; exit 2 ;;
  esac
done

run() {
  echo "+ $(printf '%q ' "$@")"
  if [[ "${dry_run}" -eq 0 ]]; then "$@"; fi
}

venv="${repo_dir}/.venv"
if [[ -x "${venv}/bin/python" ]]; then
  echo "virtualenv ${venv} exists: kept"
else
  run python3 -m venv "${venv}"
fi
# pip skips what is installed at the pinned versions, so a second run changes nothing.
run "${venv}/bin/pip" install --quiet -c "${repo_dir}/constraints.txt" -e "${repo_dir}[tpu]"
run "${venv}/bin/python" -c "import jax; print(jax.process_index(), jax.local_device_count(), jax.devices()[0].device_kind)"
