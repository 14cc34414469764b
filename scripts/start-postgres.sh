#!/usr/bin/env bash
# A PostgreSQL server on loopback for the distributed-tuning tests: Debian's package, a role and a
# database named automl (password automl). The role may create databases: each test makes a fresh one
# (and drops it), as a first run on a new server does. Idempotent. Prints nothing on success.
set -euo pipefail
if ! command -v pg_ctlcluster >/dev/null 2>&1; then
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "PostgreSQL is missing and cannot be installed here (needs root and apt-get);" \
         "the distributed-tuning test will be skipped (CI fails it instead)." >&2
    exit 0
  fi
  echo "installing PostgreSQL (Debian package) for the distributed-tuning test"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
fi
version=$(ls /etc/postgresql 2>/dev/null | sort -n | tail -n 1)
if [ -z "$version" ]; then
  echo "no PostgreSQL cluster found under /etc/postgresql; the distributed-tuning test will be skipped" >&2
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "not root: cannot start PostgreSQL; the distributed-tuning test will be skipped" >&2
  exit 0
fi
pg_ctlcluster "$version" main start >/dev/null 2>&1 || true  # "already running" is fine
for _ in $(seq 1 50); do
  su postgres -c "psql -qtAc 'select 1'" >/dev/null 2>&1 && break
  sleep 0.2
done
su postgres -c "psql -qtAc \"select 1 from pg_roles where rolname='automl'\"" | grep -q 1 \
  || su postgres -c "psql -qc \"create role automl login password 'automl'\""
su postgres -c "psql -qtAc \"select 1 from pg_roles where rolname='automl' and rolcreatedb\"" | grep -q 1 \
  || su postgres -c "psql -qc 'alter role automl createdb'"
# Dropping a test database "with (force)" terminates whatever is still connected to it, and that can be
# an autovacuum worker, which only a member of pg_signal_backend may stop (CI failed on it once).
su postgres -c "psql -qtAc \"select 1 where pg_has_role('automl', 'pg_signal_backend', 'member')\"" | grep -q 1 \
  || su postgres -c "psql -qc 'grant pg_signal_backend to automl'"
su postgres -c "psql -qtAc \"select 1 from pg_database where datname='automl'\"" | grep -q 1 \
  || su postgres -c "createdb -O automl automl"
