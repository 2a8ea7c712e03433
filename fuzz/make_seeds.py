#!/usr/bin/env python3
"""Makes the seed corpus in fuzz/seeds/ from a real PostgreSQL 15 session.

Starts a throwaway cluster, records the bytes psql and psycopg (simple and
extended protocol, text and binary results, COPY in three formats, errors,
notices, notifications) exchange with it through a recording proxy, and cuts
them into the inputs each fuzz target reads (layouts in fuzz/README.md).
Files that are not recorded (policy, agent config, SQL, tokens) are copied
from the repository's examples and tests.

    python3 fuzz/make_seeds.py [--python PYTHON_WITH_PSYCOPG]

Run as root (the cluster runs as user postgres). Rewrites fuzz/seeds/,
keeping the inputs that once found a bug (`found-*`).
"""

import argparse
import hashlib
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEEDS = os.path.join(ROOT, "fuzz", "seeds")
PGBIN = "/usr/lib/postgresql/15/bin"

SCHEMA = r"""
CREATE TABLE customers (
  id int4 PRIMARY KEY, email text, name varchar(40), code bpchar(6), nick name,
  age int2, visits int8, balance numeric(12,2), score float4, ratio float8, active bool,
  born date, wakes time, seen timestamp, seen_tz timestamptz, span interval,
  ip inet, net cidr, uid uuid, doc json, docb jsonb, photo bytea,
  tags text[], nums int4[], days date[], addrs inet[]
);
INSERT INTO customers VALUES
 (1, 'alice.martin@example.com', 'Alice Martin', 'AB12', 'alice', 34, 9000000000, 1234.50, 1.5, 2.25, true,
  '1990-02-28', '07:30:00', '2024-01-02 03:04:05.123456', '2024-01-02 03:04:05+02', '1 year 2 days 03:00:00',
  '192.168.1.20', '10.1.0.0/16', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
  '{"email":"bob@example.org","phone":"+33 6 12 34 56 78","card":4111111111111111}',
  '{"ssn":"123-45-6789","n":[1,2.5,null]}', '\xdeadbeef',
  '{"a b","c,d",NULL,"e\"f"}', '{1,2,NULL}', '{2020-01-01,1999-12-31}', '{::1,127.0.0.1/8}'),
 (2, 'bob@example.org', 'Bob "Bobby" O''Neil', 'X', 'bob', -5, -1, -0.01, 'NaN', '-Infinity', false,
  '0044-03-15 BC', '24:00:00', 'infinity', '-infinity', '-1 mons', '2001:db8::1/64', '2001:db8::/32',
  '00000000-0000-0000-0000-000000000000', '[]', '"text"', '\x', '{}', '{{1,2},{3,4}}', NULL, '{}'),
 (3, NULL, E'tab\there\nnew line', NULL, NULL, NULL, NULL, 'NaN', NULL, 1e300, NULL,
  NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, 'null', '{"a":{"b":{"c":"4111 1111 1111 1111"}}}',
  E'\\000\\001a\\\\', NULL, NULL, NULL, NULL);
CREATE TABLE secrets.keys (id int);
"""

PSQL_SESSIONS = [
    "SELECT * FROM customers ORDER BY id;",
    "SELECT id, email, upper(name) AS n, balance * 2 FROM customers WHERE id < 3;",
    "SELECT 1/0;",
    "DO $$ BEGIN RAISE NOTICE 'customer % has email %', 1, 'alice@example.com'; END $$;",
    "LISTEN ch; NOTIFY ch, 'alice@example.com called +1 555 0100'; SELECT 1;",
    "COPY customers TO STDOUT;",
    "COPY customers (id, email, born) TO STDOUT WITH (FORMAT csv, HEADER);",
    "COPY customers TO STDOUT WITH (FORMAT binary);",
    "BEGIN; SELECT email FROM customers; INSERT INTO customers (id) VALUES (1); COMMIT;",
    ";",
    "SELECT row_to_json(c) FROM customers c; SELECT count(*) FROM customers;",
]

PSYCOPG_SCRIPT = r"""
import sys, psycopg
conn = psycopg.connect(sys.argv[1], autocommit=True)
def run(cur, sql, params=None, fetch=lambda c: c.fetchall()):
    try:
        cur.execute(sql, params)
        fetch(cur)
    except Exception:  # Python cannot hold every value (BC dates); the bytes are recorded
        pass
for binary in (False, True):
    with conn.cursor(binary=binary) as cur:
        run(cur, "SELECT * FROM customers WHERE id = %s OR id = %s ORDER BY id", (1, 2))
        run(cur, "SELECT * FROM customers WHERE id = %s", (3,))
        run(cur, "SELECT email, born, ip FROM customers WHERE email LIKE %s", ("%example%",))
        run(cur, "SELECT %s::int / 0", (1,))
with conn.cursor() as cur:
    run(cur, "PREPARE p AS SELECT name FROM customers WHERE id = $1", fetch=lambda c: None)
    run(cur, "EXECUTE p(1)")
with conn.cursor(name="named") as cur:
    run(cur, "SELECT email FROM customers", fetch=lambda c: c.fetchmany(1))
conn.close()
"""


class Recorder:
    """A TCP proxy that records each connection's two byte streams."""

    def __init__(self, upstream_port):
        self.upstream_port = upstream_port
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.conns = []
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self):
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.upstream_port))
            rec = {"c": bytearray(), "s": bytearray(), "order": []}
            self.conns.append(rec)
            for src, dst, key in ((client, server, "c"), (server, client, "s")):
                threading.Thread(target=self.pipe, args=(src, dst, rec, key), daemon=True).start()

    @staticmethod
    def pipe(src, dst, rec, key):
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                data = b""
            if not data:
                try:
                    dst.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                return
            rec[key] += data
            rec["order"].append((key, len(data)))
            dst.sendall(data)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def messages(stream, startup):
    """Splits a recorded stream into messages: (tag, whole bytes)."""
    out, i = [], 0
    if startup:
        while i + 4 <= len(stream):
            n = struct.unpack(">I", stream[i:i + 4])[0]
            code = struct.unpack(">I", stream[i + 4:i + 8])[0]
            out.append((None, bytes(stream[i:i + n])))
            i += n
            if code not in (80877103, 80877104):
                break
            # The one-byte answer to SSLRequest/GSSENCRequest is on the other side.
    while i + 5 <= len(stream):
        n = struct.unpack(">I", stream[i + 1:i + 5])[0]
        out.append((chr(stream[i]), bytes(stream[i:i + 1 + n])))
        i += 1 + n
    return out


def write(target, name, data):
    d = os.path.join(SEEDS, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


CELL_TYPES = [25, 1043, 19, 705, 1042, 21, 23, 20, 1700, 700, 701, 16, 1082, 1083, 1114, 1184, 1186, 869, 650,
              2950, 114, 3802, 17, 1009, 1014, 1005, 1007, 1016, 1231, 1021, 1022, 1000, 1182, 1115, 1185, 1041,
              651, 2951, 199, 1001, 600]

# Action bytes as `action()` in masker-agent/src/fuzzing/mod.rs reads them.
ACTIONS = [b"\x01", b"\x03\x02\x02", b"\x04", b"\x05\x00", b"\x05\x01", b"\x06", b"\x08", b"\x09",
           b"\x0a\x00\x10\x30", b"\x0a\x01\x00\x64", b"\x0b", b"\x02", b"\x00"]


def cut_backend_seeds(conns):
    """Backend, frontend, startup, cell and copy seeds from recorded connections."""
    n_backend = n_cell = n_copy = 0
    seen_cells = {}
    for k, rec in enumerate(conns):
        c, s = bytes(rec["c"]), bytes(rec["s"])
        cmsgs = messages(c, startup=True)
        startup = b"".join(m for t, m in cmsgs if t is None)
        write("startup", f"rec-{k:02}", b"\x00" + startup)
        write("startup", f"rec-{k:02}-cut", b"\x07" + startup)
        after = [(t, m) for t, m in cmsgs if t is not None]
        write("frontend", f"rec-{k:02}", b"\x05" + b"".join(m for _, m in after))
        smsgs = messages(s.lstrip(b"N"), startup=False)
        # Server side after login: from the first ReadyForQuery on.
        first_z = next((i for i, (t, _) in enumerate(smsgs) if t == "Z"), None)
        if first_z is None:
            continue
        body = smsgs[first_z + 1:]
        # Pair each client request batch (up to Sync or a Query) with the
        # server's answers up to the next ReadyForQuery.
        reqs, batch = [], []
        for t, m in after:
            batch.append(m)
            if t in ("Q", "S", "X"):
                reqs.append(b"".join(batch))
                batch = []
        answers, cur = [], []
        for t, m in body:
            cur.append((t, m))
            if t == "Z":
                answers.append(cur)
                cur = []
        for req, ans in zip(reqs, answers):
            server = b"".join(m for _, m in ans)
            if len(req) + len(server) > 6000:
                server = server[:6000]
            for mode in (0, 1):
                write("backend", f"rec-{n_backend:03}-{mode}", bytes([3 + n_backend % 5, mode]) +
                      struct.pack(">H", len(req)) + req + server)
            n_backend += 1
            # Cells and COPY data of this answer.
            fields = []
            copy_fmt, copy_data = None, bytearray()
            for t, m in ans:
                if t == "T":
                    fields = parse_row_description(m[5:])
                elif t == "D" and fields:
                    for (oid, fmt), v in zip(fields, parse_data_row(m[5:])):
                        if v is None or oid not in CELL_TYPES:
                            continue
                        key = (oid, fmt)
                        if seen_cells.get(key, 0) >= 2:
                            continue
                        seen_cells[key] = seen_cells.get(key, 0) + 1
                        action = ACTIONS[n_cell % len(ACTIONS)]
                        write("cell", f"rec-{oid}-{fmt}-{n_cell:03}",
                              bytes([CELL_TYPES.index(oid), fmt]) + action + v)
                        n_cell += 1
                elif t == "H":
                    copy_fmt = m[5]
                elif t == "d":
                    copy_data += m[5:]
            if copy_fmt is not None and copy_data:
                sql = req[5:].split(b"\0")[0].decode()
                # Options bytes of `copy_options`: format and HEADER, then
                # 0 for the default delimiter, NULL marker and quotes.
                spec = 2 if copy_fmt == 1 else (5 if "HEADER" in sql else (1 if "csv" in sql else 0))
                # The copy target plans 1 to 4 columns: the COPY of all
                # columns is too wide (its rows seed the backend target).
                if "(id, email, born)" not in sql:
                    continue
                cols = [23, 25, 1082]
                head = bytes([spec, 0, 9, len(cols) - 1])
                for j, oid in enumerate(cols):
                    head += bytes([CELL_TYPES.index(oid)]) + ACTIONS[(j + 1) % len(ACTIONS)]
                write("copy", f"rec-{n_copy:02}", head + bytes(copy_data))
                n_copy += 1


def parse_row_description(b):
    n = struct.unpack(">h", b[:2])[0]
    i, out = 2, []
    for _ in range(n):
        i = b.index(b"\0", i) + 1
        _table, _col, oid, _size, _mod, fmt = struct.unpack(">IhIhih", b[i:i + 18])
        i += 18
        out.append((oid, fmt))
    return out


def parse_data_row(b):
    n = struct.unpack(">h", b[:2])[0]
    i, out = 2, []
    for _ in range(n):
        ln = struct.unpack(">i", b[i:i + 4])[0]
        i += 4
        if ln < 0:
            out.append(None)
        else:
            out.append(bytes(b[i:i + ln]))
            i += ln
    return out


def copy_seeds_by_hand():
    """Small COPY seeds of one to four columns (the recorded ones have more)."""
    rows_text = b"1\talice@example.com\t1990-02-28\n2\t\\N\t0044-03-15 BC\n3\ttab\\there\\nx\t2020-01-01\n"
    rows_csv = b"id,email,born\n1,alice@example.com,1990-02-28\n2,,1999-12-31\n3,\"a,\"\"b\"\"\nc\",2020-01-01\n"
    cols = bytes([6]) + ACTIONS[3] + bytes([0]) + ACTIONS[2] + bytes([12]) + ACTIONS[7]
    write("copy", "text-3", bytes([0, 0, 5, 2]) + cols + rows_text)
    write("copy", "csv-header-3", bytes([5, 0, 3, 2]) + cols + rows_csv)
    write("copy", "csv-3", bytes([1, 0, 11, 2]) + cols + rows_csv.split(b"\n", 1)[1])
    # DELIMITER '|' and NULL 'NULL' (text); DELIMITER ';', QUOTE '\'', ESCAPE '\\' (csv).
    write("copy", "text-pipe-null", bytes([0, 0b00010001, 7, 2]) + cols +
          rows_text.replace(b"\t", b"|").replace(b"\\N", b"NULL"))
    write("copy", "csv-quote-escape", bytes([1, 0b10000011, 0b00000100, 7, 2]) + cols +
          b"1;'alice@example.com';1990-02-28\n2;'it\\'s';1999-12-31\n")
    tup = lambda vals: struct.pack(">h", len(vals)) + b"".join(
        struct.pack(">i", -1) if v is None else struct.pack(">i", len(v)) + v for v in vals)
    binary = (b"PGCOPY\n\xff\r\n\0" + struct.pack(">II", 0, 0) +
              tup([struct.pack(">i", 1), b"alice@example.com", struct.pack(">i", 7000)]) +
              tup([struct.pack(">i", 2), None, struct.pack(">i", -700000)]) + struct.pack(">h", -1))
    write("copy", "binary-3", bytes([2, 0, 13, 2]) + cols + binary)


def sql_seeds():
    """Statements from the SQL unit tests and the psql workload."""
    texts = set(PSQL_SESSIONS)
    for path in ["masker-agent/src/sql/tests.rs", "masker-agent/src/sql/copy.rs", "masker-agent/src/sql/normalize.rs"]:
        src = open(os.path.join(ROOT, path)).read()
        for m in re.finditer(r'"((?:SELECT|WITH|COPY|INSERT|UPDATE|DELETE|CREATE|DO|CALL|MERGE|select|with|copy)'
                             r'(?:[^"\\]|\\.)*)"', src):
            texts.add(m.group(1).encode().decode("unicode_escape"))
    for t in sorted(texts)[:120]:
        write("sql", "s-" + hashlib.sha1(t.encode()).hexdigest()[:12], t.encode())


PLPGSQL = [
    "BEGIN RAISE NOTICE 'x %', (SELECT email FROM customers LIMIT 1); END",
    "DECLARE r record; BEGIN FOR r IN SELECT * FROM customers LOOP PERFORM pg_notify('c', r.email); END LOOP; END",
    "DECLARE v text; BEGIN SELECT email INTO v FROM customers WHERE id = 1; "
    "EXECUTE format('SET application_name = %L', v); END",
    "BEGIN IF EXISTS (SELECT 1 FROM customers WHERE ssn LIKE '1%') THEN RAISE EXCEPTION 'found'; END IF; END",
    "DECLARE c CURSOR FOR SELECT name FROM customers; n text; BEGIN OPEN c; FETCH c INTO n; "
    "INSERT INTO log VALUES (n); CLOSE c; END",
    "BEGIN RETURN QUERY SELECT a, email FROM customers; END",
]

DEFINITIONS = [
    " SELECT customers.id, customers.email FROM customers WHERE customers.email = 'alice@example.com'::text;",
    " SELECT c.id FROM customers c WHERE c.ssn LIKE '123%' AND c.age > 30 OR c.name IN ('Alice', 'Bob');",
    "CREATE OR REPLACE FUNCTION public.f(a integer) RETURNS text LANGUAGE sql AS $function$ "
    "SELECT email FROM customers WHERE phone = '+33 6 12 34 56 78' $function$",
    " SELECT CASE WHEN customers.email ~~ '%@example.com'::text THEN 1 ELSE 0 END AS x FROM customers;",
]


def file_seeds():
    for i, body in enumerate(PLPGSQL):
        write("plpgsql", f"do-{i}", bytes([i % 2]) + body.encode())
    write("plpgsql", "sql-language", b"\x02SELECT 1")
    for i, text in enumerate(DEFINITIONS):
        for cls in (0, 1, 2):
            write("definition", f"def-{i}-{cls}", bytes([cls]) + text.encode())
    shutil.copy(os.path.join(ROOT, "examples", "policy.toml"), os.path.join(SEEDS, "policy", "example"))
    write("policy", "minimal", b'version = 1\n[[rule]]\nname = "email"\ncolumns = ["public.customers.email"]\naction = "email"\n')
    write("policy", "bad-line", b'version = 1\n[defaults]\naction = "sometimes"\n')
    shutil.copy(os.path.join(ROOT, "packaging", "agent.toml"), os.path.join(SEEDS, "agent_config", "packaging"))
    write("agent_config", "issuers", b'targets = ["db.internal:5432", "10.0.0.5:6432"]\n[catalog]\nuser = "masker"\n'
          b'password_env = "MASKER_CATALOG_PASSWORD"\n[[credential]]\ntarget = "db.internal:5432"\nuser = "app"\n'
          b'password_env = "APP_PW"\n[[issuer]]\nissuer = "https://token.actions.githubusercontent.com"\n'
          b'audience = "masker"\njwks_url = "https://token.actions.githubusercontent.com/.well-known/jwks"\n')
    write("agent_config", "bad", b'targets = []\n')
    claims = (b'{"iss":"https://issuer.fuzz","aud":"masker","exp":1800000000,"nbf":1690000000,'
              b'"sub":"repo:acme/shop:ref:refs/heads/main","repository":"acme/shop","ref":"refs/heads/main"}')
    header = b'{"alg":"ES256","typ":"JWT","kid":"fuzz"}'
    write("token", "signed", b"\x01\x05" + header + b"\0" + claims)
    write("token", "signed-aud-list", b"\x01\x05" + header + b"\0" + claims.replace(b'"masker"', b'["x","masker"]'))
    write("token", "expired", b"\x01\xff" + header + b"\0" + claims.replace(b"1800000000", b"1700000001"))
    write("token", "garbage", b"\x00\x00eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJ4In0.c2ln")
    jwks = (b'{"keys":[{"kty":"RSA","kid":"k1","n":"sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1Wl'
            b'UzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRd'
            b'hS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTA'
            b'umiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw","e":"AQAB"}]}')
    write("token", "jwks-rsa", b"\x02\x00" + jwks + b"\0eyJhbGciOiJSUzI1NiIsImtpZCI6ImsxIn0.eyJpc3MiOiJodHRwczovL2lzc3Vlci5mdXp6In0.AAAA")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--python", default=sys.executable, help="a python with psycopg 3")
    args = ap.parse_args()
    # Inputs that once found a bug (`found-*`) stay; the rest is remade.
    for dp, _, fs in os.walk(SEEDS):
        for f in fs:
            if not f.startswith("found-"):
                os.remove(os.path.join(dp, f))
    for t in ["startup", "frontend", "backend", "cell", "copy", "policy", "agent_config", "sql", "plpgsql",
              "definition", "token"]:
        os.makedirs(os.path.join(SEEDS, t), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="masker-seeds-")
    os.chmod(tmp, 0o777)
    port = free_port()
    data = os.path.join(tmp, "data")
    run = lambda *cmd: subprocess.run(["runuser", "-u", "postgres", "--", *cmd], check=True,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run(f"{PGBIN}/initdb", "-D", data, "-A", "trust", "-U", "postgres", "--no-sync")
    run(f"{PGBIN}/pg_ctl", "-D", data, "-o", f"-p {port} -k {tmp} -c listen_addresses=127.0.0.1", "-w", "start")
    try:
        psql = ["psql", "-X", "-q", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres"]
        subprocess.run(psql + ["-p", str(port), "-c", "CREATE SCHEMA secrets;"], check=True, stdout=subprocess.DEVNULL)
        subprocess.run(psql + ["-p", str(port)], input=SCHEMA.encode(), check=True, stdout=subprocess.DEVNULL)
        rec = Recorder(port)
        env = dict(os.environ, PGSSLMODE="prefer")
        for sql in PSQL_SESSIONS:
            subprocess.run(psql + ["-p", str(rec.port), "-c", sql], env=env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
        dsn = f"host=127.0.0.1 port={rec.port} user=postgres dbname=postgres sslmode=disable"
        subprocess.run([args.python, "-c", PSYCOPG_SCRIPT, dsn], check=True)
        time.sleep(0.5)
        cut_backend_seeds(rec.conns)
    finally:
        run(f"{PGBIN}/pg_ctl", "-D", data, "-m", "immediate", "stop")
        shutil.rmtree(tmp, ignore_errors=True)
    copy_seeds_by_hand()
    sql_seeds()
    file_seeds()
    total = sum(os.path.getsize(os.path.join(dp, f)) for dp, _, fs in os.walk(SEEDS) for f in fs)
    print(f"seeds in {SEEDS}: {total} bytes")


if __name__ == "__main__":
    main()
