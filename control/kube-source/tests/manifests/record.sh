#!/bin/sh
# Re-records tests/fixtures/*.json from a real cluster (see /work/shared/e2e/README.md):
#   . /run/traffic-e2e/env.sh && control/kube-source/tests/manifests/record.sh
# Applies bookinfo.yaml (+ two TLS Secrets made with openssl), waits for the pods, dumps
# `kubectl get -o json` lists, then deletes the namespace.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
fixtures="$here/../fixtures"
ns=kube-rec
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

kubectl apply -f "$here/bookinfo.yaml"
for name in bookinfo-tls unused-tls; do
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=bookinfo.example.com" \
    -keyout "$tmp/$name.key" -out "$tmp/$name.crt" 2>/dev/null
  kubectl -n $ns create secret tls $name --cert "$tmp/$name.crt" --key "$tmp/$name.key"
done
kubectl -n $ns create secret generic not-tls --from-literal=password=x
kubectl -n $ns rollout status deployment/reviews-v1 deployment/reviews-v2 deployment/reviews-v3 --timeout=120s 2>/dev/null ||
  for d in reviews-v1 reviews-v2 reviews-v3; do kubectl -n $ns rollout status deployment/$d --timeout=120s; done
kubectl -n $ns rollout status statefulset/details --timeout=120s
kubectl -n $ns rollout status daemonset/ratings --timeout=120s

for kind in services pods replicasets deployments statefulsets daemonsets ingresses; do
  kubectl -n $ns get $kind -o json > "$fixtures/$kind.json"
done
# Only TLS Secrets (what the source watches); never the service-account token.
kubectl -n $ns get secrets --field-selector type=kubernetes.io/tls -o json > "$fixtures/secrets.json"
kubectl delete namespace $ns --wait=false
