//! Guardrails: statements a workload identity may not run at all, whatever
//! masking would do with their results (`[[identity]]` blocks of the policy:
//! `read_only`, `deny_classes`, `deny_tables`, `deny_functions`).
//!
//! Checked on the client → server path for every statement of a Query or
//! Parse, before lineage. A refusal is a 42501 error naming the rule, sent
//! the way lineage refusals are (the session stays usable) and audited as a
//! denial with rule `guardrail`.

use super::glob::{Glob, TableGlob};
use crate::sql::{Statement, StatementClass};

/// What an `[[identity]]` block allows its workloads to run (evaluated by
/// [`crate::policy::guardrails`]).
#[derive(Debug, Clone)]
pub struct Guardrails {
    /// The block's identity pattern, named in refusals.
    pub name: String,
    /// Refuse everything that is not known to only read.
    pub read_only: bool,
    pub(crate) deny_classes: Vec<StatementClass>,
    pub(crate) deny_tables: Vec<TableGlob>,
    pub(crate) deny_functions: Vec<Glob>,
    /// Functions that count as writes under `read_only` (`nextval`, an
    /// application's `refund_order`, ...).
    pub(crate) writing_functions: Vec<Glob>,
    /// Where the identity may connect at all (`None`: anywhere): targets
    /// (`host:port` globs), databases and database users (globs).
    pub(crate) targets: Option<Vec<Glob>>,
    pub(crate) databases: Option<Vec<Glob>>,
    pub(crate) users: Option<Vec<Glob>>,
    /// What sessions of the identity get of notifications (`LISTEN`).
    pub notifications: Notifications,
    /// `egress = "targets-only"`: the identity's workloads may connect only
    /// to masker's targets and to `allow_egress` (enforced in the kernel).
    pub egress: Option<crate::interception::EgressLock>,
    /// Whether the identity's sessions are masked and refused, or only
    /// observed.
    pub mode: Mode,
}

/// What masker does to the sessions of an identity (`mode` of its
/// `[[identity]]` block).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Mask, scrub, refuse and hold as the policy says (the default).
    #[default]
    Enforce,
    /// Relay everything unchanged, byte for byte, and record in the audit
    /// trail and the metrics what enforcing would have masked (per column
    /// and action) and refused: a rollout step before enforcing.
    Observe,
}

impl Mode {
    /// The name the policy file, audit events and `masker status` use.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Observe => "observe",
        }
    }
}

/// What a session gets of the notifications it listens to. Payloads a
/// masker session sends cannot carry a masked column's value (such a
/// `pg_notify` is refused); these settings are about payloads sent by
/// anything else (an application writing to the same database).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Notifications {
    /// Payloads are scanned by the content detectors and what they find is
    /// masked (the default): names and street addresses, which no detector
    /// recognises, pass.
    #[default]
    Scrub,
    /// No notification reaches the client.
    Withhold,
}

impl Guardrails {
    /// Why a session of `identity` to `targets` (the names a target goes
    /// by: its configured `host:port` and the address connected to; any
    /// may match), `database` as `user` may not start, or `None` when the
    /// block allows it. The message is what the client sees (SQLSTATE
    /// 28000).
    pub fn connect_refusal(&self, identity: &str, targets: &[&str], database: &str, user: &str) -> Option<String> {
        let allows = |globs: &Option<Vec<Glob>>, s: &[&str]| {
            globs.as_ref().is_none_or(|g| g.iter().any(|g| s.iter().any(|s| g.matches(s))))
        };
        let what = if !allows(&self.targets, targets) {
            format!("target {}", targets.first().copied().unwrap_or_default())
        } else if !allows(&self.databases, &[database]) {
            format!("database {database}")
        } else if !allows(&self.users, &[user]) {
            format!("database user {user}")
        } else {
            return None;
        };
        Some(format!("masker: identity {identity} may not connect to {what} (rule: identity {})", self.name))
    }
}

/// A relation of the statement as the catalog resolved it (`schema` is
/// `None` when the agent could not resolve the name).
pub struct Resolved<'a> {
    pub schema: Option<&'a str>,
    pub name: &'a str,
}

/// Why `stmt` may not run under `g`, if it may not. Messages name the
/// statement kind, table or function and the rule; never a value.
pub fn violation(g: &Guardrails, stmt: &Statement, relations: &[Resolved<'_>]) -> Option<String> {
    let rule = |what: &str| format!("rule: identity {} {what}", g.name);
    if g.deny_classes.contains(&stmt.class) {
        return Some(format!("masker: {} statements are refused ({})", stmt.class.name(), rule("deny_classes")));
    }
    for r in relations {
        let hit = g.deny_tables.iter().any(|t| t.matches(r.schema, r.name));
        if hit {
            let name = match r.schema {
                Some(s) => format!("{s}.{}", r.name),
                None => r.name.to_string(),
            };
            return Some(format!("masker: access to {name} is refused ({})", rule("deny_tables")));
        }
    }
    for f in &stmt.functions {
        let base = f.rsplit('.').next().unwrap_or(f);
        let listed = |globs: &[Glob]| globs.iter().any(|g| g.matches(base) || g.matches(f));
        if listed(&g.deny_functions) {
            return Some(format!("masker: calling {f}() is refused ({})", rule("deny_functions")));
        }
        if g.read_only && listed(&g.writing_functions) {
            return Some(format!(
                "masker: calling {f}() is refused: it writes ({}, with {f} in writing_functions)",
                rule("read_only")
            ));
        }
    }
    if g.read_only
        && let Some(write) = stmt.write
    {
        return Some(format!("masker: {write} is refused ({}); reads are allowed", rule("read_only")));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Policy;
    use crate::sql::analyze_uncached;

    const POLICY: &str = r#"
version = 1
[[identity]]
name = "ci-*"
read_only = true
deny_tables = ["payments", "secret.*"]
deny_functions = ["pg_read_file"]
writing_functions = ["nextval", "app.refund_*"]
[[identity]]
name = "release-*"
deny_classes = ["ddl"]
"#;

    fn check(identity: &str, sql: &str) -> Option<String> {
        let policy = Policy::parse(POLICY, "policy.toml").unwrap();
        let session = policy.for_session(identity, None, "db:5432");
        let g = session.guardrails()?;
        let analysis = analyze_uncached(sql).unwrap();
        analysis.statements.iter().find_map(|stmt| {
            let resolved: Vec<Resolved<'_>> = stmt
                .relations
                .iter()
                .map(|r| Resolved { schema: r.schema.as_deref().or(Some("public")), name: &r.name })
                .collect();
            violation(g, stmt, &resolved)
        })
    }

    #[test]
    fn read_only_refuses_every_kind_of_write() {
        for (sql, what) in [
            ("INSERT INTO t VALUES (1)", "INSERT"),
            ("UPDATE t SET a = 1", "UPDATE"),
            ("DELETE FROM t", "DELETE"),
            ("MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DELETE", "MERGE"),
            ("TRUNCATE t", "TRUNCATE"),
            ("CREATE TABLE x (a int)", "DDL"),
            ("DROP TABLE t", "DDL"),
            ("ALTER ROLE app SUPERUSER", "DDL"),
            ("COPY t FROM STDIN", "COPY FROM"),
            ("GRANT SELECT ON t TO public", "GRANT / REVOKE"),
            ("REVOKE app FROM bob", "GRANT / REVOKE"),
            ("SET ROLE postgres", "SET ROLE"),
            ("SET SESSION AUTHORIZATION postgres", "SET ROLE"),
            ("DO $$ BEGIN DELETE FROM t; END $$", "DO / CALL"),
            ("CALL app.cleanup()", "DO / CALL"),
            ("EXPLAIN ANALYZE DELETE FROM t", "EXPLAIN ANALYZE"),
            ("WITH d AS (DELETE FROM t RETURNING *) SELECT count(*) FROM d", "data-modifying WITH"),
            ("SELECT * INTO t2 FROM t", "SELECT INTO"),
            ("CREATE TABLE t2 AS SELECT 1", "CREATE TABLE AS"),
            ("PREPARE p AS INSERT INTO t VALUES (1)", "INSERT"),
            ("SELECT nextval('s')", "nextval"),
            ("SELECT app.refund_order(7)", "app.refund_order"),
            ("VACUUM t", "DDL or another statement"),
        ] {
            let m = check("ci-build", sql).unwrap_or_else(|| panic!("{sql} was allowed"));
            assert!(m.contains(what) && m.contains("rule: identity ci-* read_only"), "{sql}: {m}");
        }
    }

    #[test]
    fn read_only_allows_reads() {
        for sql in [
            "SELECT * FROM t",
            "SELECT upper(a) FROM t WHERE id = 1 ORDER BY 1",
            "EXPLAIN SELECT * FROM t",
            "EXPLAIN (ANALYZE) SELECT * FROM t",
            "EXPLAIN (ANALYZE false) DELETE FROM t",
            "BEGIN",
            "COMMIT",
            "SAVEPOINT s",
            "SET search_path = app",
            "SHOW work_mem",
            "RESET ROLE",
            "COPY t TO STDOUT",
            "DECLARE c CURSOR FOR SELECT * FROM t",
            "FETCH 10 FROM c",
            "PREPARE q AS SELECT * FROM t WHERE id = $1",
            "EXECUTE q(1)",
            "LISTEN ch",
        ] {
            assert_eq!(check("ci-build", sql), None, "{sql}");
        }
    }

    #[test]
    fn deny_lists_and_identity_selection() {
        let m = check("ci-x", "SELECT amount FROM payments").unwrap();
        assert!(m.contains("public.payments") && m.contains("deny_tables"), "{m}");
        assert!(check("ci-x", "SELECT * FROM secret.keys").unwrap().contains("secret.keys"));
        assert!(check("ci-x", "SELECT pg_read_file('/etc/passwd')").unwrap().contains("deny_functions"));
        // Another identity: its own block, or none.
        assert!(check("release-1", "INSERT INTO t VALUES (1)").is_none());
        assert!(check("release-1", "CREATE INDEX ON t (a)").unwrap().contains("ddl statements are refused"));
        assert!(check("someone", "DROP TABLE t").is_none());
    }

    #[test]
    fn policy_errors_name_the_field() {
        let e = Policy::parse("version = 1\n[[identity]]\nname = \"ci\"\ndeny_classes = [\"dml\"]\n", "p.toml")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("p.toml:4:17: unknown statement class \"dml\"; expected one of select,"), "{e}");
        let e = Policy::parse("version = 1\n[[identity]]\nname = \"ci\"\nread_onyl = true\n", "p.toml")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("p.toml:4:1: unknown field `read_onyl`"), "{e}");
        let e = Policy::parse("version = 1\n[[identity]]\nname = \"ci\"\ndeny_tables = [\"a.b.c\"]\n", "p.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("expected `table` or `schema.table`"), "{e}");
    }
}
