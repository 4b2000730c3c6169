#!/usr/bin/env bash
# Builds the local control plane from pinned Go modules and caches the binaries by version:
#   ${ROOST_CACHE:-~/.cache/roost}/bin/<version>/{etcd,kube-apiserver,kube-controller-manager,kube-scheduler,kwok,helm}
# and the tests' S3 server, bin/versitygw-<version>/versitygw.
# A binary already in the cache is never rebuilt. Prints the directory of the binaries last.
# Usage: hack/k8s/build.sh [--print-dir]   (--print-dir: print the directory, build nothing)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=/dev/null
. "$here/versions.env"
cache=${ROOST_CACHE:-$HOME/.cache/roost}
k8s_dir="$cache/bin/kubernetes-${KUBERNETES_VERSION}"
kwok_dir="$cache/bin/kwok-${KWOK_VERSION}"
# The ldflags are part of the cache key: a helm built without upstream's Kubernetes-version
# ldflags (it then assumes v1.20) lives under another name and is never picked up.
helm_dir="$cache/bin/helm-${HELM_VERSION}-kube1.${HELM_KUBE_MINOR}"
s3_dir="$cache/bin/versitygw-${VERSITYGW_VERSION}"
if [[ "${1:-}" == "--print-dir" ]]; then
  echo "$k8s_dir:$kwok_dir:$helm_dir:$s3_dir"; exit 0
fi
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS="-mod=mod -trimpath"
mkdir -p "$k8s_dir" "$kwok_dir" "$helm_dir" "$s3_dir"
log() { printf '[k8s-build %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

minor=${KUBERNETES_VERSION#v1.}; minor=${minor%%.*}
build_date=$(date -u -d @"${SOURCE_DATE_EPOCH:-0}" +%Y-%m-%dT%H:%M:%SZ)
k8s_ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  k8s_ldflags+=" -X $pkg.gitVersion=${KUBERNETES_VERSION} -X $pkg.gitMajor=1 -X $pkg.gitMinor=${minor}"
  k8s_ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=${build_date}"
done

build() { # build <out-dir> <name> <package> <ldflags> [module-dir]
  local out=$1/$2 pkg=$3 ldflags=$4 dir=${5:-$here}
  if [[ -x "$out" ]]; then log "$2: cached at $out"; return; fi
  log "$2: building $pkg (cold builds take minutes on 2 cores)"
  local start=$SECONDS
  (cd "$dir" && go build -ldflags "$ldflags" -o "$out.tmp" "$pkg")
  mv "$out.tmp" "$out"
  log "$2: built in $((SECONDS - start)) s"
}

build "$k8s_dir" etcd go.etcd.io/etcd/server/v3 "-s -w"
build "$k8s_dir" kube-apiserver k8s.io/kubernetes/cmd/kube-apiserver "$k8s_ldflags"
build "$k8s_dir" kube-controller-manager k8s.io/kubernetes/cmd/kube-controller-manager "$k8s_ldflags"
build "$k8s_dir" kube-scheduler k8s.io/kubernetes/cmd/kube-scheduler "$k8s_ldflags"

# kwok and helm are separate module graphs: build each from its own pinned go.mod in a
# throwaway module so their replace directives and versions are exactly upstream's.
build_module() { # build_module <out-dir> <name> <module> <version> <package> <ldflags> [check]
  local out=$1/$2
  if [[ -x "$out" ]]; then log "$2: cached at $out"; return; fi
  local src
  src=$(cd "$here" && go mod download -json "$3@$4" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
  if [[ -n "${7:-}" ]] && ! grep -Eq "$7" "$src/go.mod"; then
    log "$2: $src/go.mod does not match '$7': update versions.env"; return 1
  fi
  local work; work=$(mktemp -d)
  cp -r "$src/." "$work/"; chmod -R u+w "$work"
  build "$1" "$2" "$5" "$6" "$work"
  rm -rf "$work"
}
build_module "$kwok_dir" kwok sigs.k8s.io/kwok "$KWOK_VERSION" ./cmd/kwok \
  "-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=${KWOK_VERSION#v}"
# Upstream's Makefile ldflags: without the k8sVersion ones `helm template` assumes Kubernetes
# v1.20 and refuses the chart's kubeVersion (>= 1.29) unless --kube-version is given.
helm_ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=${HELM_VERSION}"
for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
  helm_ldflags+=" -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=${HELM_KUBE_MINOR}"
done
build_module "$helm_dir" helm helm.sh/helm/v3 "$HELM_VERSION" ./cmd/helm "$helm_ldflags" \
  "k8s.io/client-go v0\.${HELM_KUBE_MINOR}\."
# The tests' object store: upstream's own command and go.mod (measured cold on the shared
# 2 cores: 19 s to download 340 MB of modules, 6 minutes to build; docs/architecture.md says why
# not SeaweedFS or gofakes3).
build_module "$s3_dir" versitygw github.com/versity/versitygw "$VERSITYGW_VERSION" ./cmd/versitygw \
  "-s -w -X main.Version=${VERSITYGW_VERSION} -X main.Build=module -X main.BuildTime=${build_date}"
# The Gateway API CRDs come from the same pinned module graph.
gw_src=$(cd "$here" && go mod download -json "sigs.k8s.io/gateway-api@${GATEWAY_API_VERSION}" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
mkdir -p "$cache/gateway-api-${GATEWAY_API_VERSION}"
cp -f "$gw_src"/config/crd/standard/*.yaml "$cache/gateway-api-${GATEWAY_API_VERSION}/"
chmod u+w "$cache/gateway-api-${GATEWAY_API_VERSION}"/*.yaml
log "all binaries ready"
echo "$k8s_dir:$kwok_dir:$helm_dir:$s3_dir"
