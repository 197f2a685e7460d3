#!/usr/bin/env bash
# Create the secrets a GreenCache cluster needs, once, before `ray up` (cluster.yaml mounts them
# on every node): Ray's token-auth token, the shared Redis tier's password and the key KV chunks
# are MAC'd with. They are random,
# owner-readable only, and never committed (.secrets/ is in .gitignore).
#   bash scripts/cluster/make_secrets.sh [DIR]     (default: .secrets next to cluster.yaml)
set -euo pipefail
DIR=${1:-"$(cd "$(dirname "$0")/../.." && pwd)/.secrets"}
umask 077
mkdir -p "$DIR"
for name in ray_auth_token redis_password kv_mac_key; do
  if [ ! -s "$DIR/$name" ]; then
    python3 -c 'import secrets; print(secrets.token_urlsafe(32))' > "$DIR/$name"
    echo "created $DIR/$name"
  fi
done
