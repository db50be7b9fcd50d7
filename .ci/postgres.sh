# Throwaway PostgreSQL server for the cohort-store tests (sourced by .ci/run; bash).
# kimap_postgres_start: installs Debian's postgresql when missing, initdb into a temp dir as user postgres, starts it
# on 127.0.0.1 at a free port (socket in the same temp dir), creates database kimap_test and exports
# KIMAP_TEST_POSTGRES_URL. kimap_postgres_stop: stops it and removes the temp dir (run it from an EXIT trap).

kimap_postgres_bin() {
  local bin
  bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  [ -n "$bin" ] && echo "$bin"
}

kimap_postgres_start() {
  if [ -z "$(kimap_postgres_bin)" ]; then
    echo "ci: installing postgresql (Debian package) for the cohort-store tests" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >/dev/null
  fi
  local bin port
  bin=$(kimap_postgres_bin)
  KIMAP_PG_DIR=$(mktemp -d /tmp/kimap-pg.XXXXXX)
  chown postgres: "$KIMAP_PG_DIR"
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  su postgres -s /bin/sh -c "'$bin/initdb' -D '$KIMAP_PG_DIR/data' -U postgres -A trust -E UTF8 --no-locale" >/dev/null
  su postgres -s /bin/sh -c "'$bin/pg_ctl' -D '$KIMAP_PG_DIR/data' -l '$KIMAP_PG_DIR/log' -w \
    -o \"-h 127.0.0.1 -p $port -k '$KIMAP_PG_DIR' -c fsync=off\" start" >/dev/null
  su postgres -s /bin/sh -c "'$bin/createdb' -h 127.0.0.1 -p $port -U postgres kimap_test"
  export KIMAP_PG_DIR
  export KIMAP_TEST_POSTGRES_URL="postgresql://postgres@127.0.0.1:$port/kimap_test"
  echo "ci: PostgreSQL $("$bin/postgres" --version | awk '{print $3}') on 127.0.0.1:$port (throwaway)" >&2
}

kimap_postgres_stop() {
  [ -n "${KIMAP_PG_DIR:-}" ] && [ -d "$KIMAP_PG_DIR" ] || return 0
  su postgres -s /bin/sh -c "'$(kimap_postgres_bin)/pg_ctl' -D '$KIMAP_PG_DIR/data' -m fast -w stop" >/dev/null 2>&1 || true
  rm -rf "$KIMAP_PG_DIR"
}
