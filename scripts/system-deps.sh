#!/usr/bin/env bash
# System packages the template suite needs: a real redis-server, the testssl.sh scanner, and
# PostgreSQL's server programs (the PostgreSQL bake's suite starts its own server).
set -euo pipefail
missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
command -v testssl >/dev/null || command -v testssl.sh >/dev/null || missing+=(testssl.sh)
# Debian keeps initdb and postgres off PATH, under /usr/lib/postgresql/<version>/bin.
command -v initdb >/dev/null || compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || missing+=(postgresql)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -eq 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
  sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
else
  echo "error: missing ${missing[*]}: install with: sudo apt-get install ${missing[*]}" >&2
  exit 1
fi
