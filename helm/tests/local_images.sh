#!/usr/bin/env bash
# Builds chart images from locally built binaries, without any registry, on the machine's e2e
# Docker (traffic-e2e/busybox carries the host's glibc, so host-built Rust binaries run in it):
#   helm/tests/local_images.sh <tag> [--agent target/release/traffic-agent] [--control target/release/traffic-control]
# gives traffic-manager/agent:<tag> and traffic-manager/control:<tag>; install the chart with
#   --set imagePullPolicy=Never,agent.image.tag=<tag>,control.image.tag=<tag>,envoy.image.repository=traffic-e2e/envoy,envoy.image.tag=1.39.3
# These test images have no iptables binaries: the agent in them serves eBPF mode only (the real
# images come from agent/Dockerfile and control/Dockerfile).
set -euo pipefail
tag=${1:?usage: local_images.sh <tag> [--agent BIN] [--control BIN]}
shift
agent="" control=""
while [ $# -gt 0 ]; do
  case "$1" in
    --agent) agent=$2; shift 2 ;;
    --control) control=$2; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
base=${TRAFFIC_E2E_APP_IMAGE:-traffic-e2e/busybox:1.37.0}
build() { # name binary default-args
  local name=$1 bin=$2 cmd=$3 ctx
  ctx=$(mktemp -d)
  trap 'rm -rf "$ctx"' RETURN
  install -m 0755 "$bin" "$ctx/$name"
  cat >"$ctx/Dockerfile" <<DOCKERFILE
FROM $base
COPY $name /usr/local/bin/$name
ENTRYPOINT ["/usr/local/bin/$name"]
CMD ["$cmd"]
DOCKERFILE
  docker build -q -t "traffic-manager/${name#traffic-}:$tag" "$ctx"
}
[ -n "$agent" ] && build traffic-agent "$agent" run
[ -n "$control" ] && build traffic-control "$control" serve
docker images --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep "^traffic-manager/.*:$tag " || true
