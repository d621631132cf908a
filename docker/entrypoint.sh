#!/usr/bin/env bash
# Entrypoint of the footprints image (docker/Dockerfile): the first argument picks the role,
# the remaining arguments are appended to that role's command.
#
#   dask-worker [ARGS]     (default) one Dask worker with one GPU, connected to
#                          $DASK_SCHEDULER_ADDRESS (default tcp://dask-scheduler:8786),
#                          named $DASK_WORKER_NAME (default: the container's hostname)
#   dask-scheduler [ARGS]  the Dask scheduler on 8786, its HTTP endpoint (/health) on 8787
#   prefect-worker [ARGS]  a Prefect process worker polling work pool $PREFECT_WORK_POOL
#                          (default footprints) of the server at $PREFECT_API_URL
#   COMMAND [ARGS]         anything else is exec'd as is, e.g. `footprints segment ...` or `bash`
#
# One worker per GPU: run one container per device, each given exactly one GPU (compose:
# deploy.resources.reservations.devices with one device id). The worker declares GPU=1, so
# inference tasks, which ask for resources={"GPU": 1}, run one at a time per device.
set -euo pipefail

mode="${1:-dask-worker}"
if [[ $# -gt 0 ]]; then
  shift
fi

case "$mode" in
  dask-worker)
    exec dask worker "${DASK_SCHEDULER_ADDRESS:-tcp://dask-scheduler:8786}" \
      --nworkers 1 --nthreads 1 --resources GPU=1 \
      --name "${DASK_WORKER_NAME:-$HOSTNAME}" \
      "$@"
    ;;
  dask-scheduler)
    exec dask scheduler --port 8786 --dashboard-address :8787 "$@"
    ;;
  prefect-worker)
    # The code lives in $FOOTPRINTS_HOME (/opt/footprints; pipeline/ and flows/ are also
    # pip-installed). A process worker starts each flow run in a fresh temporary directory unless
    # the deployment says otherwise, so deployments set job_variables.working_dir (or a
    # set_working_directory pull step) to /opt/footprints, where configs/gpu.yaml resolves.
    cd "${FOOTPRINTS_HOME:-/opt/footprints}"
    exec prefect worker start --pool "${PREFECT_WORK_POOL:-footprints}" --type process "$@"
    ;;
  *)
    exec "$mode" "$@"
    ;;
esac
