#!/bin/sh
# Run one Pod from a template to completion in $KUBE_NAMESPACE, print its log, delete it, and exit 0 only if
# it succeeded. Used by the CI stages pull_image and test_after_deploy.
#   run-pod.sh TEMPLATE POD_NAME IMAGE [MODULE] [TIMEOUT_S]
set -eu
template=$1
name=$2
image=$3
module=${4:-}
timeout_s=${5:-600}
ns=${KUBE_NAMESPACE:?KUBE_NAMESPACE is not set}

sed -e "s|__POD_NAME__|$name|g" -e "s|__IMAGE__|$image|g" -e "s|__MODULE__|$module|g" "$template" \
  | kubectl -n "$ns" apply -f -
trap 'kubectl -n "$ns" delete pod "$name" --ignore-not-found --wait=false >/dev/null 2>&1 || true' EXIT

deadline=$(( $(date +%s) + timeout_s ))
while :; do
  phase=$(kubectl -n "$ns" get pod "$name" -o jsonpath='{.status.phase}' 2>/dev/null || true)
  waiting=$(kubectl -n "$ns" get pod "$name" \
    -o jsonpath='{.status.containerStatuses[0].state.waiting.reason}' 2>/dev/null || true)
  case "$phase/$waiting" in
    Succeeded/*)
      kubectl -n "$ns" logs "$name"
      echo "pod $name ($image) succeeded"
      exit 0 ;;
    Failed/*)
      kubectl -n "$ns" logs "$name" || true
      kubectl -n "$ns" describe pod "$name" >&2
      echo "pod $name ($image) failed" >&2
      exit 1 ;;
    */ErrImagePull | */ImagePullBackOff | */InvalidImageName | */CreateContainerConfigError)
      kubectl -n "$ns" describe pod "$name" >&2
      echo "pod $name cannot start: $waiting ($image)" >&2
      exit 1 ;;
  esac
  if [ "$(date +%s)" -ge "$deadline" ]; then
    kubectl -n "$ns" describe pod "$name" >&2
    echo "pod $name still $phase after ${timeout_s}s" >&2
    exit 1
  fi
  sleep 5
done
