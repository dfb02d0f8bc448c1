# Starts a throwaway PostgreSQL server on loopback for tests and benchmarks.
# shellcheck shell=bash
# Usage: pg_start DIR [durable] -> exports OUTPOST_TEST_PG_URL; pg_stop DIR
# Tests run without fsync (their data is thrown away); `durable` keeps PostgreSQL's own
# defaults (fsync, synchronous commit), as benchmarks must.
pg_bin() {
    local d
    d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
    [ -n "$d" ] || { echo "PostgreSQL server binaries not found (run scripts/setup)" >&2; return 1; }
    echo "$d"
}

pg_start() {
    local dir=$1 mode=${2:-fast} bin port opts
    bin=$(pg_bin)
    opts="-c listen_addresses=127.0.0.1 -c max_connections=400"
    [ "$mode" = durable ] || opts="$opts -c fsync=off -c synchronous_commit=off"
    mkdir -p "$dir"
    chown postgres: "$dir"
    # PostgreSQL refuses to run as root: run it as the postgres system user.
    if [ ! -f "$dir/data/PG_VERSION" ]; then
        runuser -u postgres -- "$bin/initdb" -D "$dir/data" -A trust -U postgres >/dev/null
    fi
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    runuser -u postgres -- "$bin/pg_ctl" -D "$dir/data" -l "$dir/log" -w \
        -o "-p $port -k $dir $opts" \
        start >/dev/null
    export OUTPOST_TEST_PG_URL="postgres://postgres@127.0.0.1:$port/postgres"
}

pg_stop() {
    local dir=$1 bin
    bin=$(pg_bin)
    runuser -u postgres -- "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null 2>&1 || true
    rm -rf "$dir"
}
