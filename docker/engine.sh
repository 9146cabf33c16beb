#!/usr/bin/env bash
# A private Docker engine for building and testing the worker image on a machine without one.
#
#   eval "$(docker/engine.sh start)"   # starts dockerd (root), prints `export DOCKER_HOST=...`
#   docker/engine.sh stop
#
# dockerd runs without iptables and without its bridge (containers use --network host), with its
# data root (images, build cache) under $HPO_DOCKER_CACHE/engine, kept between runs, and its
# socket, pid file, log and exec root under $HPO_DOCKER_RUN. `start` reuses an engine already
# answering on that socket. Needs the dockerd of Debian's docker.io package. Exit status 3: this
# machine cannot run it (no dockerd, not root, or dockerd does not start).
set -euo pipefail

CACHE="${HPO_DOCKER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/xray-hpo/docker}"
RUN="${HPO_DOCKER_RUN:-/tmp/xray-hpo-docker}"  # short: a unix socket path has at most 107 bytes
SOCK="unix://$RUN/docker.sock"

answers() { DOCKER_HOST="$SOCK" docker info >/dev/null 2>&1; }

case "${1:-}" in
  start)
    if ! answers; then
      command -v dockerd >/dev/null || { echo "engine.sh: dockerd not found (apt-get install docker.io)" >&2; exit 3; }
      [ "$(id -u)" = 0 ] || { echo "engine.sh: dockerd needs root" >&2; exit 3; }
      mkdir -p "$CACHE/engine" "$RUN"
      setsid dockerd --iptables=false --ip6tables=false --bridge=none \
        --data-root "$CACHE/engine" --exec-root "$RUN/exec" --pidfile "$RUN/dockerd.pid" \
        -H "$SOCK" >"$RUN/dockerd.log" 2>&1 </dev/null &
      for _ in $(seq 120); do answers && break; sleep 0.5; done
      answers || { echo "engine.sh: dockerd did not answer on $SOCK within 60 s; see $RUN/dockerd.log:" >&2; tail -n 5 "$RUN/dockerd.log" >&2; exit 3; }
      echo "engine.sh: started dockerd (pid $(cat "$RUN/dockerd.pid")), data root $CACHE/engine" >&2
    fi
    echo "export DOCKER_HOST=$SOCK"
    ;;
  stop)
    if [ -f "$RUN/dockerd.pid" ]; then
      pid="$(cat "$RUN/dockerd.pid")"
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    fi
    ;;
  *)
    echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
