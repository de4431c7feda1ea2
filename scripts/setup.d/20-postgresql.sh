#!/usr/bin/env bash
# PostgreSQL server binaries for the registry tests (tests/registry/support.py starts a throwaway cluster with
# initdb + pg_ctl on a loopback port). Installs Debian's postgresql only when initdb/pg_ctl are missing.
set -euo pipefail
have_server() {
    for dir in /usr/lib/postgresql/*/bin; do
        if [ -x "$dir/initdb" ] && [ -x "$dir/pg_ctl" ] && [ -x "$dir/postgres" ]; then return 0; fi
    done
    command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1
}
if have_server && { [ "$(id -u)" -ne 0 ] || id postgres >/dev/null 2>&1; }; then
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends postgresql >/dev/null
have_server
