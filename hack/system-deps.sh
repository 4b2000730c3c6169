#!/usr/bin/env bash
# Installs the Debian packages the tests, benchmarks and demo use, once: prometheus (analysis
# source and scrape fixture), wrk (benchmark load generator), openssl (cluster certificates).
set -euo pipefail
need=()
command -v prometheus >/dev/null || need+=(prometheus)
command -v wrk >/dev/null || need+=(wrk)
command -v openssl >/dev/null || need+=(openssl)
[[ ${#need[@]} -eq 0 ]] && exit 0
echo "[system-deps] installing ${need[*]}" >&2
sudo=""; [[ $(id -u) -ne 0 ]] && sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
