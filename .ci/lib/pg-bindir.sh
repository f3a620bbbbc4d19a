# shellcheck shell=bash
# Sourced by .ci/pg-cluster and .ci/patroni-cluster (not run): where PostgreSQL's server
# programs are, so both scripts -- and tests/common/pg_server.rs, which looks the same way --
# drive one installation.
#
# find_bindir prints `pg_config --bindir` when that holds initdb, else the newest
# /usr/lib/postgresql/<version>/bin (pg_config comes with libpq-dev, which a machine with the
# server alone may lack); with neither, a path without initdb: callers test "$bindir/initdb"
# and install the server.

find_bindir() {
    local bindir=""
    if command -v pg_config >/dev/null 2>&1; then
        bindir=$(pg_config --bindir)
    fi
    if [ ! -x "$bindir/initdb" ]; then
        # By version number (sort -V puts 10 after 9); with none installed, the unmatched
        # pattern, which holds no initdb either.
        bindir=$(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
    fi
    echo "$bindir"
}
