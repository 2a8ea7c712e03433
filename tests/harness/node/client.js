// node-pg as a test client (tests/harness/node.rs). Reads one JSON object on
// stdin, {conn: {host, port, user, password, database}, steps: [{text,
// values, name, extended}]}, runs the steps in order in one session and
// prints what the client received as one JSON object: per step the results
// (command, row count, field descriptions, rows as the server's text) or
// the error's fields; the notices with the step they arrived during.
// Values are not parsed: every type parser returns the server's text.
'use strict';
const fs = require('fs');
const { Client } = require('pg');

const unparsed = { getTypeParser: () => (value) => value };
const ERROR_FIELDS = ['severity', 'code', 'message', 'detail', 'hint', 'position', 'internalPosition',
  'internalQuery', 'where', 'schema', 'table', 'column', 'dataType', 'constraint', 'file', 'line', 'routine'];

function errorFields(e) {
  const out = {};
  for (const k of ERROR_FIELDS) {
    if (e && e[k] !== undefined) out[k] = e[k];
  }
  if (Object.keys(out).length === 0) out.client = String(e);
  return out;
}

function cell(v) {
  if (v === null) return null;
  return Buffer.isBuffer(v) ? '\\x' + v.toString('hex') : v;
}

async function main() {
  const input = JSON.parse(fs.readFileSync(0, 'utf8'));
  const client = new Client({ ...input.conn, ssl: false, connectionTimeoutMillis: 10000 });
  const out = { steps: [], notices: [] };
  client.on('notice', (n) => out.notices.push({ step: out.steps.length, ...errorFields(n) }));
  await client.connect();
  for (const step of input.steps) {
    const query = { text: step.text, values: step.values, name: step.name, rowMode: 'array', types: unparsed };
    if (step.extended) query.queryMode = 'extended';
    try {
      const r = await client.query(query);
      const results = (Array.isArray(r) ? r : [r]).map((one) => ({
        command: one.command,
        rowCount: one.rowCount,
        fields: (one.fields || []).map((f) => ({ ...f })),
        rows: (one.rows || []).map((row) => row.map(cell)),
      }));
      out.steps.push({ results });
    } catch (e) {
      out.steps.push({ error: errorFields(e) });
    }
  }
  await client.end();
  process.stdout.write(JSON.stringify(out));
}

main().catch((e) => {
  process.stderr.write(String((e && e.stack) || e) + '\n');
  process.exit(1);
});
