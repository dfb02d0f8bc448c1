#!/bin/sh
# The Outpost demo scan target: two tiny TCP services that the demo feed's
# NASL scripts detect. busybox only (nc -ll -e), so it runs in the guest.
#
#   demo-target.sh            serve both ports until killed
#   demo-target.sh banner     answer one connection on stdin/stdout (used by nc -e)
#   demo-target.sh http       answer one HTTP request on stdin/stdout (used by nc -e)
#
# Environment: BANNER_PORT (2121), HTTP_PORT (8080), either "off", BUSYBOX (busybox).
# Run it inside a network namespace of its own: nc listens on every address.
set -eu

BANNER='220 OutpostDemo/1.0 ready'
CR=$(printf '\r')

case "${1:-serve}" in
banner)
    printf '%s\r\n' "$BANNER"
    ;;
http)
    # Read the request head up to its blank line, then answer and close.
    while IFS= read -r line; do
        line=${line%"$CR"}
        [ -z "$line" ] && break
    done
    body='<html><head><title>Outpost demo target</title></head><body>Outpost demo target</body></html>'
    printf 'HTTP/1.0 200 OK\r\nServer: OutpostDemo/1.0\r\nContent-Type: text/html\r\nContent-Length: %s\r\nConnection: close\r\n\r\n%s' \
        "${#body}" "$body"
    ;;
serve)
    bb=${BUSYBOX:-busybox}
    self=$(readlink -f "$0")
    # A port set to "off" is not served (the lab's hosts differ in what they run).
    pids=""
    if [ "${BANNER_PORT:-2121}" != off ]; then
        "$bb" nc -ll -p "${BANNER_PORT:-2121}" -e "$self" banner &
        pids="$pids $!"
    fi
    if [ "${HTTP_PORT:-8080}" != off ]; then
        "$bb" nc -ll -p "${HTTP_PORT:-8080}" -e "$self" http &
        pids="$pids $!"
    fi
    # shellcheck disable=SC2086 # a list of pids
    trap 'kill $pids 2>/dev/null; exit 0' INT TERM
    echo "demo target: banner on ${BANNER_PORT:-2121}, http on ${HTTP_PORT:-8080}"
    wait
    ;;
*)
    echo "usage: $0 [serve|banner|http]" >&2
    exit 2
    ;;
esac
