#!/usr/bin/env bash
# Start the shared Redis tier on the Ray head node (cluster.yaml's head_start_ray_commands).
#   bash start_redis.sh PASSWORD_FILE [PORT] [MAXMEMORY]
# The configuration, password included, goes to redis-server on its standard input, so no
# command line (which `ps` shows to every user) carries the password. Port 6380: Ray's GCS has
# 6379. Bound to all interfaces: the workers reach it over the cluster's private network, which
# the cloud's security group keeps closed to the outside; the password guards it inside.
set -euo pipefail
PASSWORD_FILE=$1
PORT=${2:-6380}
MAXMEMORY=${3:-8gb}
if redis-cli -p "$PORT" --no-auth-warning -a "$(cat "$PASSWORD_FILE")" ping >/dev/null 2>&1; then
  exit 0  # already running (ray up re-runs start commands)
fi
{
  echo "port $PORT"
  echo "bind 0.0.0.0"
  echo "protected-mode no"
  echo "save \"\""
  echo "appendonly no"
  echo "maxmemory $MAXMEMORY"
  echo "maxmemory-policy allkeys-lru"
  echo "daemonize yes"
  echo "logfile /tmp/greencache-redis.log"
  printf 'requirepass %s\n' "$(cat "$PASSWORD_FILE")"
} | redis-server -
