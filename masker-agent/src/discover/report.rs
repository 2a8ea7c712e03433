//! What `masker discover` writes: the proposed policy, `COMMENT ON COLUMN`
//! SQL, the terminal table and the progress bar. Everything here is built
//! from names, types, dictionary patterns and counts; a [`super::Report`]
//! holds no sampled value to write.

use std::fmt::Write as _;
use std::io::{IsTerminal, Write as _};
use std::path::Path;

use super::{Category, ColumnReport, Report};
use crate::discover::inventory::quote_ident;

/// The proposed policy (TOML), loadable by `masker policy check` as it is.
pub fn policy_toml(r: &Report) -> String {
    let proposed = r.proposed().count();
    let mut o = String::new();
    let _ = writeln!(o, "# masker policy proposed by `masker discover` {}", r.version);
    let _ = writeln!(o, "# database: {}", comment_safe(&r.database));
    let _ = writeln!(
        o,
        "# {} columns in {} tables and views; {proposed} proposed for masking.",
        r.columns.len(),
        r.relations.len()
    );
    let _ = writeln!(
        o,
        "# Sample: up to {} rows per table or view, {}s each. The evidence after each\n\
         # column is signals and counts only: no sampled value is written here.",
        r.sample_rows, r.table_timeout_secs
    );
    o.push_str(
        "#\n\
         # Review before use, then: masker policy check <this file>\n\
         # - Names of people are redacted. For stable tokens that still join, set the\n\
         #   person-name rule's action to \"pseudonymize\" and add a [pseudonymize] key.\n\
         # - Columns no rule lists get defaults.action = \"detect\": their content is\n\
         #   scanned and what the detectors find is masked.\n\
         # - comment_classification: a column comment \"pii:<rule>\" applies that rule\n\
         #   (the --comments SQL writes such comments).\n\
         # - The columns below are exact; a '?' stands for a character a pattern\n\
         #   cannot hold ('.', '*', '?').\n\
         \n\
         version = 1\n\
         \n\
         [defaults]\n\
         action = \"detect\"\n\
         comment_classification = true\n",
    );
    for category in Category::ALL {
        let cols: Vec<&ColumnReport> = r.proposed().filter(|c| c.category == Some(category)).collect();
        if cols.is_empty() {
            continue;
        }
        let _ = writeln!(o, "\n# ---- {}: {} column(s)", category.rule_name(), cols.len());
        let _ =
            writeln!(o, "[[rule]]\nname = \"{}\"\ndescription = \"{}\"", category.rule_name(), category.description());
        o.push_str("columns = [\n");
        for c in &cols {
            let _ = writeln!(o, "  {},  # {}", toml_string(&column_pattern(c)), comment_safe(&c.signals.join("; ")));
        }
        o.push_str("]\n");
        o.push_str(category.action_toml());
        o.push('\n');
    }
    let review: Vec<&ColumnReport> = r.columns.iter().filter(|c| c.review).collect();
    if !review.is_empty() {
        o.push_str("\n# ---- worth a look\n");
        for c in review {
            let verdict = match c.rule {
                Some(rule) => format!("rule {rule}"),
                None => "no rule".to_string(),
            };
            let notes: Vec<&str> = c.notes.iter().map(String::as_str).collect();
            let _ = writeln!(
                o,
                "# {} ({verdict}): {}",
                comment_safe(&format!("{}.{}.{}", c.schema, c.table, c.column)),
                comment_safe(&notes.join("; "))
            );
        }
    }
    let unsampled: Vec<String> = r
        .relations
        .iter()
        .filter(|rel| rel.outcome == "timed_out" || rel.outcome == "failed")
        .map(|rel| format!("{}.{}: {}", rel.schema, rel.name, rel.sample))
        .collect();
    if !unsampled.is_empty() {
        o.push_str("\n# ---- samples cut short (classified from names, types and comments, and what was read)\n");
        for line in unsampled {
            let _ = writeln!(o, "# {}", comment_safe(&line));
        }
    }
    o
}

/// `COMMENT ON COLUMN` statements that tag each proposed column with its
/// rule, keeping the existing comment; columns already tagged are left alone.
pub fn comments_sql(r: &Report) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "-- Column classifications proposed by `masker discover` {} for", r.version);
    let _ = writeln!(o, "-- {}. Review, then apply with psql -f <this file>.", sql_comment_safe(&r.database));
    o.push_str(
        "-- Existing comments are kept; each column gets a pii:<rule> tag that a masker\n\
         -- policy with comment_classification = true (the default) applies.\n\
         BEGIN;\n",
    );
    for c in r.proposed().filter(|c| !c.tagged) {
        let Some(rule) = c.rule else { continue };
        let text = match c.comment.as_deref().map(str::trim_end).filter(|s| !s.is_empty()) {
            Some(old) => format!("{old} pii:{rule}"),
            None => format!("pii:{rule}"),
        };
        let _ = writeln!(
            o,
            "COMMENT ON COLUMN {}.{}.{} IS '{}';",
            quote_ident(&c.schema),
            quote_ident(&c.table),
            quote_ident(&c.column),
            text.replace('\'', "''")
        );
    }
    o.push_str("COMMIT;\n");
    o
}

/// The terminal table: proposed columns (every column with `all`), then the
/// ones worth a look, then a summary.
pub fn table(r: &Report, all: bool, output: Option<&Path>, comments: Option<&Path>) -> String {
    let mut rows: Vec<[String; 5]> = Vec::new();
    for c in &r.columns {
        if !(all || c.category.is_some()) {
            continue;
        }
        rows.push([
            format!("{}.{}.{}", c.schema, c.table, c.column),
            c.type_name.clone(),
            c.rule.unwrap_or("-").to_string(),
            c.category.map_or("-", Category::action_label).to_string(),
            if c.signals.is_empty() { c.notes.join("; ") } else { c.signals.join("; ") },
        ]);
    }
    let mut o = String::new();
    let head = ["COLUMN", "TYPE", "RULE", "ACTION", "EVIDENCE"];
    let width = |k: usize| rows.iter().map(|r| r[k].chars().count()).chain([head[k].len()]).max().unwrap_or(0).min(48);
    let w = [width(0), width(1), width(2), width(3)];
    let line = |o: &mut String, r: [&str; 5]| {
        let _ = writeln!(
            o,
            "{:<w0$}  {:<w1$}  {:<w2$}  {:<w3$}  {}",
            terminal_safe(r[0]),
            terminal_safe(r[1]),
            r[2],
            r[3],
            terminal_safe(r[4]),
            w0 = w[0],
            w1 = w[1],
            w2 = w[2],
            w3 = w[3]
        );
    };
    line(&mut o, head);
    for r in &rows {
        line(&mut o, [&r[0], &r[1], &r[2], &r[3], &r[4]]);
    }
    let review: Vec<&ColumnReport> = r.columns.iter().filter(|c| c.review).collect();
    if !review.is_empty() {
        let _ = writeln!(o, "\nWORTH A LOOK");
        for c in review {
            let _ = writeln!(
                o,
                "  {}: {}",
                terminal_safe(&format!("{}.{}.{}", c.schema, c.table, c.column)),
                terminal_safe(&c.notes.join("; "))
            );
        }
    }
    let count = |kind: &str| r.relations.iter().filter(|rel| rel.outcome == kind).count();
    let (sampled, timed_out, failed) = (count("sampled"), count("timed_out"), count("failed"));
    let _ = writeln!(
        o,
        "\n{} columns in {} tables and views ({sampled} sampled, {timed_out} timed out, {failed} failed); \
         {} proposed for masking.",
        r.columns.len(),
        r.relations.len(),
        r.proposed().count()
    );
    match output {
        Some(p) if p.as_os_str() != "-" => {
            let _ =
                writeln!(o, "Policy written to {}; check it with `masker policy check {}`.", p.display(), p.display());
        }
        Some(_) => {}
        None => {
            let _ = writeln!(o, "No policy written (--output FILE writes one).");
        }
    }
    if let Some(p) = comments {
        let _ = writeln!(o, "COMMENT ON COLUMN statements written to {}.", p.display());
    }
    o
}

/// A progress bar on standard error while relations are sampled, only when
/// standard error is a terminal.
pub struct Progress {
    total: usize,
    on: bool,
}

impl Progress {
    pub fn new(total: usize) -> Progress {
        Progress { total, on: std::io::stderr().is_terminal() && total > 0 }
    }

    /// Relation `i` (0-based) named `name` is being sampled.
    pub fn show(&mut self, i: usize, name: &str) {
        if !self.on {
            return;
        }
        const WIDTH: usize = 30;
        let done = i * WIDTH / self.total;
        let name: String = terminal_safe(name).chars().take(50).collect();
        let mut err = std::io::stderr().lock();
        let _ =
            write!(err, "\r\x1b[2K[{}{}] {}/{} {name}", "#".repeat(done), " ".repeat(WIDTH - done), i + 1, self.total);
        let _ = err.flush();
    }

    /// Clears the bar.
    pub fn finish(&mut self) {
        if self.on {
            let _ = write!(std::io::stderr(), "\r\x1b[2K");
        }
    }
}

/// A column's `schema.table.column` pattern: `.`, `*` and `?` inside a name
/// become `?` (a pattern cannot hold them; `?` matches them).
fn column_pattern(c: &ColumnReport) -> String {
    let part = |s: &str| s.chars().map(|ch| if matches!(ch, '.' | '*' | '?') { '?' } else { ch }).collect::<String>();
    format!("{}.{}.{}", part(&c.schema), part(&c.table), part(&c.column))
}

/// A TOML basic string.
fn toml_string(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    o.push('"');
    for ch in s.chars() {
        match ch {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(o, "\\u{:04X}", c as u32);
            }
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

/// Text for a `#` comment line: control characters become `?`.
fn comment_safe(s: &str) -> String {
    s.chars().map(|c| if c.is_control() { '?' } else { c }).collect()
}

/// Text for a `--` SQL comment line.
fn sql_comment_safe(s: &str) -> String {
    comment_safe(s)
}

/// Text for the terminal: no control characters (escape sequences in names).
fn terminal_safe(s: &str) -> String {
    comment_safe(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discover::{RelationReport, Report};

    fn col(table: &str, column: &str, category: Option<Category>, comment: Option<&str>) -> ColumnReport {
        ColumnReport {
            schema: "public".into(),
            table: table.into(),
            column: column.into(),
            type_name: "text".into(),
            relation_kind: "table",
            rule: category.map(Category::rule_name),
            category,
            signals: vec!["name \"email\"".into(), "sample: 9 of 10 values are emails (90.0%)".into()],
            notes: vec![],
            review: false,
            sampled_values: Some(10),
            tagged: comment.is_some_and(|c| c.contains("pii:")),
            comment: comment.map(str::to_string),
        }
    }

    fn report(columns: Vec<ColumnReport>) -> Report {
        Report {
            version: "0.0.0",
            database: "u@h:1/d".into(),
            sample_rows: 10,
            table_timeout_secs: 1,
            relations: vec![RelationReport {
                schema: "public".into(),
                name: "t".into(),
                kind: "table",
                outcome: "sampled",
                sample: "10 rows".into(),
                rows: 10,
            }],
            columns,
        }
    }

    #[test]
    fn the_proposed_policy_loads() {
        let mut cols = vec![col("t", "we\"ird.col*", Some(Category::Email), None)];
        for (i, c) in Category::ALL.iter().enumerate() {
            cols.push(col("t", &format!("c{i}"), Some(*c), None));
        }
        cols.push(col("t", "plain", None, None));
        let text = policy_toml(&report(cols));
        let policy = crate::policy::Policy::parse(&text, "proposed.toml").unwrap_or_else(|e| panic!("{e}\n{text}"));
        let s = policy.for_session("any", None, "h:1");
        assert_eq!(s.column_action("public", "t", "we\"ird.col*", None), crate::masking::ColumnAction::Email);
        assert_eq!(s.column_action("public", "t", "c6", None).kind().map(|k| k.as_str()), Some("generalize"));
        assert_eq!(s.column_action("public", "t", "plain", None), crate::masking::ColumnAction::Detect);
        assert!(text.contains("# name \"email\"; sample: 9 of 10 values are emails (90.0%)"), "{text}");
    }

    #[test]
    fn comments_keep_existing_text_and_skip_tagged_columns() {
        let sql = comments_sql(&report(vec![
            col("t", "a", Some(Category::Phone), Some("Mobile, don't share")),
            col("t", "b", Some(Category::Email), Some("pii:email")),
            col("t", "c", None, None),
        ]));
        assert!(sql.contains("COMMENT ON COLUMN \"public\".\"t\".\"a\" IS 'Mobile, don''t share pii:phone';"), "{sql}");
        assert!(!sql.contains("\"b\""));
        assert!(!sql.contains("\"c\""));
        assert!(sql.trim_end().ends_with("COMMIT;"));
    }
}
