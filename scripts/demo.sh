#!/usr/bin/env bash
# The README's main command: sets everything up, then shows masker working.
#
#   1. installs what is missing (nightly rust-src, bpf-linker, PostgreSQL 15)
#   2. builds masker (release, eBPF object embedded)
#   3. starts a throwaway PostgreSQL with fake personal data
#   4. starts `masker agent` with the eBPF redirect for that database
#   5. runs psql with the unchanged connection string, first directly, then
#      through `masker run` in a tagged cgroup: the same query, masked rows
#   6. prints `masker status`, then cleans everything up
#
# Run as root on Linux with cgroup v2 and BPF.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
setup_all

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

[ "$(id -u)" = 0 ] || { echo "demo: run as root (eBPF and cgroups need it)" >&2; exit 1; }

say "building masker (release)"
cargo build --release -p masker-agent
MASKER="$PWD/target/release/masker"

PGBIN=$(pg_config --bindir 2>/dev/null || true)
[ -x "$PGBIN/initdb" ] || PGBIN=/usr/lib/postgresql/15/bin
WORK=$(mktemp -d /tmp/masker-demo.XXXXXX)
chmod 755 "$WORK"
PGPORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
AGENT_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
PIN_DIR=/sys/fs/bpf/masker-demo-$$
ADMIN="$WORK/admin.sock"
AGENT_PID=""

cleanup() {
  set +e
  if [ -n "$AGENT_PID" ]; then kill "$AGENT_PID" 2>/dev/null; wait "$AGENT_PID" 2>/dev/null; fi
  "$MASKER" uninstall --pin-dir "$PIN_DIR" >/dev/null 2>&1
  runuser -u postgres -- "$PGBIN/pg_ctl" -D "$WORK/pg" -m immediate stop >/dev/null 2>&1
  rm -rf "$WORK"
}
trap cleanup EXIT

say "starting a throwaway PostgreSQL on 127.0.0.1:$PGPORT"
echo "postgres-demo-pw" > "$WORK/pwfile"
chown postgres "$WORK/pwfile"
mkdir "$WORK/pg" && chown postgres "$WORK/pg" && chmod 700 "$WORK/pg"
runuser -u postgres -- "$PGBIN/initdb" -N -D "$WORK/pg" -U postgres --pwfile="$WORK/pwfile" -A scram-sha-256 >/dev/null
runuser -u postgres -- "$PGBIN/pg_ctl" -D "$WORK/pg" -l "$WORK/pg/server.log" -w \
  -o "-p $PGPORT -c listen_addresses=127.0.0.1 -c unix_socket_directories=$WORK/pg -c fsync=off" start >/dev/null
export PGPASSWORD=postgres-demo-pw
psql -X -q "postgresql://postgres@127.0.0.1:$PGPORT/postgres" <<'SQL'
CREATE ROLE app LOGIN PASSWORD 'app-pw';
CREATE ROLE masker LOGIN PASSWORD 'masker-pw';
CREATE DATABASE shop OWNER app;
SQL
PGPASSWORD=app-pw psql -X -q "postgresql://app@127.0.0.1:$PGPORT/shop" <<'SQL'
CREATE TABLE customers (
  id serial PRIMARY KEY, full_name text, email text, phone text, ssn text,
  card_number text, birth_date date, last_ip inet, plan text, balance numeric(10,2), notes text);
COMMENT ON COLUMN customers.ssn IS 'pii:ssn';
INSERT INTO customers (full_name, email, phone, ssn, card_number, birth_date, last_ip, plan, balance, notes)
SELECT (ARRAY['Alice Martin','Bruno Keller','Chiara Rossi','Dmitri Volkov','Emma Schulz'])[i],
       (ARRAY['alice.martin','bruno.k','chiara.rossi','dvolkov','emma.s'])[i] || '@example.com',
       '+1 415 555 01' || lpad(i::text, 2, '0'),
       '123-45-67' || lpad((10 + i)::text, 2, '0'),
       (ARRAY['4111 1111 1111 1111','5500 0000 0000 0004','3400 0000 0000 009','6011 0000 0000 0004','4012 8888 8888 1881'])[i],
       date '1980-01-01' + i * 1000, ('203.0.113.' || (10 + i))::inet,
       (ARRAY['free','pro','team','pro','free'])[i], i * 12.5,
       'called ' || (ARRAY['alice.martin','bruno.k','chiara.rossi','dvolkov','emma.s'])[i] || '@example.com about renewal'
FROM generate_series(1, 5) i;
SQL

cat > "$WORK/policy.toml" <<'TOML'
version = 1

[defaults]
action = "detect"
comment_classification = true

[pseudonymize]
key_env = "MASKER_DEMO_KEY"

[[rule]]
name = "names"
columns = ["*.customers.full_name"]
action = "pseudonymize"

[[rule]]
name = "emails"
column_names = ["*email*"]
action = "email"

[[rule]]
name = "phones"
column_names = ["phone"]
action = "partial"
keep_last = 2

[[rule]]
name = "cards"
column_names = ["card_number"]
action = "partial"
keep_last = 4

[[rule]]
name = "birth-date"
column_names = ["birth_date"]
action = "generalize"
to = "year"

[[rule]]
name = "client-ip"
column_names = ["last_ip"]
action = "generalize"
to = "network"

[[rule]]
name = "business"
column_names = ["id", "plan", "balance"]
action = "allow"
TOML
cat > "$WORK/agent.toml" <<TOML
listen = "127.0.0.1:$AGENT_PORT"
admin_socket = "$ADMIN"
pin_dir = "$PIN_DIR"
state_dir = "$WORK/state"
policy = "$WORK/policy.toml"
targets = ["127.0.0.1:$PGPORT"]

[catalog]
user = "masker"
password_env = "MASKER_CATALOG_PASSWORD"
TOML

say "starting masker agent (eBPF redirect of 127.0.0.1:$PGPORT for tagged cgroups)"
MASKER_DEMO_KEY=demo-pseudonym-key MASKER_CATALOG_PASSWORD=masker-pw \
  "$MASKER" agent --config "$WORK/agent.toml" > "$WORK/agent.out" 2> "$WORK/agent.log" &
AGENT_PID=$!
for _ in $(seq 100); do [ -S "$ADMIN" ] && break; sleep 0.1; done
[ -S "$ADMIN" ] || { cat "$WORK/agent.log" >&2; exit 1; }
export MASKER_ADMIN_SOCKET="$ADMIN"

URL="postgresql://app:app-pw@127.0.0.1:$PGPORT/shop"
QUERY="SELECT id, full_name, email, phone, ssn, card_number, birth_date, last_ip, plan, balance, notes FROM customers ORDER BY id"

say "the workload's query, directly (an untagged process: raw personal data)"
echo "\$ psql \"$URL\" -c \"$QUERY\""
psql -X "$URL" -c "$QUERY"

say "the same command in a tagged cgroup: masker run --identity ci-demo -- psql ..."
"$MASKER" run --identity ci-demo -- psql -X "$URL" -c "$QUERY"

say "masker status (one session still open)"
"$MASKER" run --identity ci-demo -- psql -X -q "$URL" -c "SELECT pg_sleep(2)" >/dev/null &
RUN_PID=$!
sleep 1
"$MASKER" status
wait "$RUN_PID"

say "done; stopping the agent and the database"
