#!/bin/sh
# Deploy the production overlay with every service image at TAG, wait for each rollout, and if any rollout
# fails, put every Deployment that this run changed back on the revision it had before.
#   deploy.sh TAG        (needs CI_REGISTRY_IMAGE and KUBE_NAMESPACE; OVERLAY defaults to the prod overlay)
set -eu
tag=$1
registry=${CI_REGISTRY_IMAGE:?CI_REGISTRY_IMAGE is not set}
ns=${KUBE_NAMESPACE:?KUBE_NAMESPACE is not set}
overlay=${OVERLAY:-manifests/overlays/prod}
deployments="model-svc train-svc stream-svc"

revision() {
  kubectl -n "$ns" get deployment "$1" --ignore-not-found \
    -o jsonpath='{.metadata.annotations.deployment\.kubernetes\.io/revision}'
}

(cd "$overlay" && kustomize edit set image \
  "train-svc=$registry/train-svc:$tag" \
  "model-svc=$registry/model-svc:$tag" \
  "stream-svc=$registry/stream-svc:$tag")
kubectl kustomize "$overlay" > rendered.yaml

before=""
for d in $deployments; do
  before="$before $d=$(revision "$d")"
done

kubectl apply -k "$overlay"

failed=""
for d in $deployments; do
  kubectl -n "$ns" rollout status "deployment/$d" --timeout=10m || failed="$failed $d"
done
[ -z "$failed" ] && { echo "deployed $tag"; exit 0; }

echo "rollout failed for:$failed; rolling back every Deployment this run changed" >&2
for pair in $before; do
  d=${pair%%=*}
  old=${pair#*=}
  now=$(revision "$d")
  if [ -n "$old" ] && [ "$old" != "$now" ]; then
    kubectl -n "$ns" rollout undo "deployment/$d" --to-revision="$old" || true
  fi
done
for d in $deployments; do
  kubectl -n "$ns" rollout status "deployment/$d" --timeout=5m || true
done
exit 1
