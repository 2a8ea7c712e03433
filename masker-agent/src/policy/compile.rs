//! Compiling a policy file: from [`super::schema`] to the runtime
//! [`Policy`], checking every value and naming the line of every problem.

use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use toml::Spanned;

use super::approval::{ApprovalRule, DEFAULT_APPROVAL_TIMEOUT, MAX_APPROVAL_TIMEOUT};
use super::error::{Errors, PolicyError};
use super::glob::{ClaimGlob, ClaimsMatch, Glob, TableGlob};
use super::guardrails::Guardrails;
use super::schema::*;
use super::{Defaults, EnvLookup, Policy, Rule};
use crate::masking::{ColumnAction, Generalize, Keys};
use crate::sql::StatementClass;

fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

impl Policy {
    /// Reads, parses and validates the policy file at `path`, and loads the
    /// pseudonymisation key it names (from the environment or a key file).
    pub fn from_file(path: &Path) -> Result<Policy, PolicyError> {
        Policy::from_file_with_env(path, &process_env)
    }

    /// [`Policy::from_file`] with environment variables looked up by `env`.
    pub fn from_file_with_env(path: &Path, env: EnvLookup<'_>) -> Result<Policy, PolicyError> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| PolicyError {
            origin: origin.clone(),
            at: None,
            message: format!("cannot read the policy file: {e}"),
        })?;
        Policy::parse_with_env(&text, &origin, env)
    }

    /// Parses and validates a policy; `origin` names it in errors (a path).
    #[cfg(test)]
    pub fn parse(text: &str, origin: &str) -> Result<Policy, PolicyError> {
        Policy::parse_with_env(text, origin, &process_env)
    }

    /// Parses and validates a policy (`origin` names it in errors, a path),
    /// with environment variables looked up by `env`.
    pub fn parse_with_env(text: &str, origin: &str, env: EnvLookup<'_>) -> Result<Policy, PolicyError> {
        let errs = Errors { origin, text };
        let raw: RawPolicy = toml::from_str(text).map_err(|e| match e.span() {
            Some(span) => errs.at(span, e.message().trim_end().to_owned()),
            None => errs.whole(e.message().trim_end().to_owned()),
        })?;
        if *raw.version.get_ref() != 1 {
            return Err(errs
                .at(raw.version.span(), format!("unsupported policy version {}; expected 1", raw.version.get_ref())));
        }
        let defaults = Defaults {
            action: match raw.defaults.action.unwrap_or(DefaultAction::Detect) {
                DefaultAction::Detect => ColumnAction::Detect,
                DefaultAction::Allow => ColumnAction::Allow,
                DefaultAction::Redact => ColumnAction::Redact,
            },
            comment_classification: raw.defaults.comment_classification.unwrap_or(true),
            refuse_inference: raw.defaults.refuse_inference.unwrap_or(false),
        };
        let mut rules = Vec::with_capacity(raw.rule.len());
        let mut pseudonymized_at = None;
        for r in &raw.rule {
            let rule = compile_rule(r.get_ref(), &defaults, &errs)?;
            if matches!(rule.action, ColumnAction::Pseudonymize { .. }) && pseudonymized_at.is_none() {
                pseudonymized_at = Some(r.get_ref().action.span());
            }
            rules.push(rule);
        }
        let keys = load_keys(raw.pseudonymize.as_ref(), pseudonymized_at, &errs, env)?;
        let identities = raw.identity.iter().map(|i| compile_identity(i.get_ref(), &errs)).collect::<Result<_, _>>()?;
        let approvals = raw
            .approval
            .iter()
            .map(|a| compile_approval(a.get_ref(), &errs).map(Arc::new))
            .collect::<Result<_, _>>()?;
        Ok(Policy { defaults, rules, identities, approvals, keys })
    }
}

fn compile_rule(r: &RawRule, defaults: &Defaults, errs: &Errors<'_>) -> Result<Rule, PolicyError> {
    let name = r.name.get_ref();
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
        return Err(errs.at(
            r.name.span(),
            "invalid rule name; expected letters, digits, `_` or `-` (it is the tag in `pii:<name>` comments)",
        ));
    }
    let action_name = *r.action.get_ref();
    let only = |field: &str, span: Option<Range<usize>>, wanted: ActionName, what: &str| -> Result<(), PolicyError> {
        match span {
            Some(span) if action_name != wanted => {
                Err(errs.at(span, format!("`{field}` applies only to action \"{what}\"")))
            }
            _ => Ok(()),
        }
    };
    only("keep_first", r.keep_first.as_ref().map(Spanned::span), ActionName::Partial, "partial")?;
    only("keep_last", r.keep_last.as_ref().map(Spanned::span), ActionName::Partial, "partial")?;
    only(
        "format_preserving",
        r.format_preserving.as_ref().map(Spanned::span),
        ActionName::Pseudonymize,
        "pseudonymize",
    )?;
    only("to", r.to.as_ref().map(Spanned::span), ActionName::Generalize, "generalize")?;
    only("bucket", r.bucket.as_ref().map(Spanned::span), ActionName::Generalize, "generalize")?;
    only("ipv4_prefix", r.ipv4_prefix.as_ref().map(Spanned::span), ActionName::Generalize, "generalize")?;
    only("ipv6_prefix", r.ipv6_prefix.as_ref().map(Spanned::span), ActionName::Generalize, "generalize")?;

    let action = match action_name {
        ActionName::Allow => ColumnAction::Allow,
        ActionName::Redact => ColumnAction::Redact,
        ActionName::Null => ColumnAction::Null,
        ActionName::Email => ColumnAction::Email,
        ActionName::Detect => ColumnAction::Detect,
        ActionName::Pseudonymize => {
            ColumnAction::Pseudonymize { format_preserving: r.format_preserving.as_ref().is_some_and(|s| *s.get_ref()) }
        }
        ActionName::Partial => {
            if r.keep_first.is_none() && r.keep_last.is_none() {
                return Err(errs.at(
                    r.action.span(),
                    "action \"partial\" needs `keep_first` and/or `keep_last` (characters kept)",
                ));
            }
            ColumnAction::Partial {
                first: r.keep_first.as_ref().map_or(0, |s| *s.get_ref()),
                last: r.keep_last.as_ref().map_or(0, |s| *s.get_ref()),
            }
        }
        ActionName::Generalize => ColumnAction::Generalize(generalize(r, errs)?),
    };

    let globs = |list: &Option<Spanned<Vec<Spanned<String>>>>, what: &str| -> Result<Option<Vec<Glob>>, PolicyError> {
        let Some(list) = list else { return Ok(None) };
        if list.get_ref().is_empty() {
            return Err(errs.at(list.span(), format!("empty `{what}` list matches nothing; remove it or add patterns")));
        }
        list.get_ref()
            .iter()
            .map(|p| Glob::new(p.get_ref()).ok_or_else(|| errs.at(p.span(), "empty pattern")))
            .collect::<Result<_, _>>()
            .map(Some)
    };
    let columns = match &r.columns {
        Some(list) => list.get_ref().iter().map(|p| column_glob(p, errs)).collect::<Result<_, _>>()?,
        None => Vec::new(),
    };
    let column_names = globs(&r.column_names, "column_names")?.unwrap_or_default();
    if columns.is_empty() && column_names.is_empty() && !defaults.comment_classification {
        return Err(errs.at(
            r.name.span(),
            "rule selects no column; expected `columns` or `column_names` (or defaults.comment_classification = true to apply it through `pii:<name>` comments)",
        ));
    }
    Ok(Rule {
        name: name.clone(),
        columns,
        column_names,
        action,
        identities: globs(&r.identities, "identities")?,
        targets: globs(&r.targets, "targets")?,
        claims: r.claims.as_ref().map(|c| compile_claims(c, errs)).transpose()?,
    })
}

fn compile_claims(raw: &Spanned<RawClaims>, errs: &Errors<'_>) -> Result<ClaimsMatch, PolicyError> {
    let mut out = Vec::with_capacity(raw.get_ref().len());
    for (name, value) in raw.get_ref() {
        let text = match value.get_ref() {
            toml::Value::String(s) => s.clone(),
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            other => {
                return Err(errs.at(
                    value.span(),
                    format!(
                        "claim `{name}`: expected a string pattern (globs * and ?), found {}",
                        match other {
                            toml::Value::Array(_) => "an array",
                            toml::Value::Table(_) => "a table",
                            toml::Value::Float(_) => "a float",
                            _ => "a date-time",
                        }
                    ),
                ));
            }
        };
        if text.is_empty() {
            return Err(errs.at(value.span(), format!("claim `{name}`: empty pattern")));
        }
        out.push((name.clone(), ClaimGlob::new(&text)));
    }
    Ok(ClaimsMatch(out))
}

fn compile_identity(
    i: &RawIdentity,
    errs: &Errors<'_>,
) -> Result<(Glob, Option<ClaimsMatch>, Arc<Guardrails>), PolicyError> {
    let pattern = Glob::new(i.name.get_ref()).ok_or_else(|| errs.at(i.name.span(), "empty identity pattern"))?;
    let claims = i.claims.as_ref().map(|c| compile_claims(c, errs)).transpose()?;
    let list = |l: &Option<Spanned<Vec<Spanned<String>>>>, what: &str| list_of(l, what, errs);
    let glob = |p: &Spanned<String>| Glob::new(p.get_ref()).ok_or_else(|| errs.at(p.span(), "empty pattern"));
    let deny_classes =
        list(&i.deny_classes, "deny_classes")?.iter().map(|c| statement_class(c, errs)).collect::<Result<_, _>>()?;
    let deny_tables =
        list(&i.deny_tables, "deny_tables")?.iter().map(|t| table_glob(t, errs)).collect::<Result<_, _>>()?;
    let deny_functions = list(&i.deny_functions, "deny_functions")?.iter().map(glob).collect::<Result<_, _>>()?;
    let writing_functions =
        list(&i.writing_functions, "writing_functions")?.iter().map(glob).collect::<Result<_, _>>()?;
    // Absent: anywhere. Present: at least one pattern (an empty list would
    // refuse every session, which is what removing the block's identity
    // from the runner is for).
    let allow = |l: &Option<Spanned<Vec<Spanned<String>>>>, what: &str| -> Result<Option<Vec<Glob>>, PolicyError> {
        match l {
            None => Ok(None),
            Some(_) => Ok(Some(list(l, what)?.iter().map(glob).collect::<Result<_, _>>()?)),
        }
    };
    let targets = allow(&i.targets, "targets")?;
    if let Some(list) = &i.targets {
        for t in list.get_ref() {
            if !t.get_ref().contains(':') {
                return Err(
                    errs.at(t.span(), "expected a \"host:port\" glob (e.g. \"db.internal:5432\" or \"*:5432\")")
                );
            }
        }
    }
    let databases = allow(&i.databases, "databases")?;
    let users = allow(&i.users, "users")?;
    let notifications = match &i.notifications {
        None => super::guardrails::Notifications::Scrub,
        Some(n) => match n.get_ref().as_str() {
            "scrub" => super::guardrails::Notifications::Scrub,
            "withhold" => super::guardrails::Notifications::Withhold,
            _ => return Err(errs.at(n.span(), "expected \"scrub\" or \"withhold\"")),
        },
    };
    let egress = match i.egress.as_ref().map(|e| (e, e.get_ref().as_str())) {
        None | Some((_, "open")) => {
            if let Some(a) = &i.allow_egress {
                return Err(errs.at(a.span(), "`allow_egress` needs `egress = \"targets-only\"` on the same identity"));
            }
            None
        }
        Some((_, "targets-only")) => {
            let mut allow = Vec::new();
            if let Some(a) = &i.allow_egress {
                for n in a.get_ref() {
                    let parsed = n
                        .get_ref()
                        .parse::<crate::interception::NetPort>()
                        .map_err(|e| errs.at(n.span(), e.to_string()))?;
                    allow.push(parsed);
                }
            }
            Some(crate::interception::EgressLock { allow })
        }
        Some((e, _)) => return Err(errs.at(e.span(), "expected \"targets-only\" or \"open\"")),
    };
    let mode = match &i.mode {
        None => super::guardrails::Mode::Enforce,
        Some(m) => match m.get_ref().as_str() {
            "enforce" => super::guardrails::Mode::Enforce,
            "observe" => super::guardrails::Mode::Observe,
            _ => return Err(errs.at(m.span(), "expected \"enforce\" (the default) or \"observe\"")),
        },
    };
    Ok((
        pattern,
        claims,
        Arc::new(Guardrails {
            name: i.name.get_ref().clone(),
            read_only: i.read_only,
            deny_classes,
            deny_tables,
            deny_functions,
            writing_functions,
            targets,
            databases,
            users,
            notifications,
            egress,
            mode,
        }),
    ))
}

/// The entries of an optional list (none when absent; an empty list is an
/// error: it would silently match nothing).
fn list_of(
    l: &Option<Spanned<Vec<Spanned<String>>>>,
    what: &str,
    errs: &Errors<'_>,
) -> Result<Vec<Spanned<String>>, PolicyError> {
    match l {
        None => Ok(Vec::new()),
        Some(l) if l.get_ref().is_empty() => {
            Err(errs.at(l.span(), format!("empty `{what}` list; remove it or add entries")))
        }
        Some(l) => Ok(l.get_ref().clone()),
    }
}

/// A `schema.table.column` pattern.
fn column_glob(p: &Spanned<String>, errs: &Errors<'_>) -> Result<[Glob; 3], PolicyError> {
    let parts: Vec<&str> = p.get_ref().split('.').collect();
    let [s, t, c] = parts.as_slice() else {
        return Err(errs.at(p.span(), "expected \"schema.table.column\" (globs * and ? allowed, e.g. \"*.*.email\")"));
    };
    let g = |x: &str| Glob::new(x).ok_or_else(|| errs.at(p.span(), "empty part in \"schema.table.column\""));
    Ok([g(s)?, g(t)?, g(c)?])
}

/// A `table` or `schema.table` pattern.
fn table_glob(t: &Spanned<String>, errs: &Errors<'_>) -> Result<TableGlob, PolicyError> {
    let (schema, table) = match t.get_ref().split_once('.') {
        Some((s, t)) => (Some(s), t),
        None => (None, t.get_ref().as_str()),
    };
    let bad = || errs.at(t.span(), "expected `table` or `schema.table` (globs allowed)");
    Ok(TableGlob {
        schema: schema.map(|s| Glob::new(s).ok_or_else(bad)).transpose()?,
        table: Glob::new(table).filter(|_| !table.contains('.')).ok_or_else(bad)?,
    })
}

/// A statement class name.
fn statement_class(c: &Spanned<String>, errs: &Errors<'_>) -> Result<StatementClass, PolicyError> {
    StatementClass::from_name(c.get_ref()).ok_or_else(|| {
        errs.at(
            c.span(),
            format!("unknown statement class {:?}; expected one of {}", c.get_ref(), StatementClass::NAMES.join(", ")),
        )
    })
}

fn compile_approval(a: &RawApproval, errs: &Errors<'_>) -> Result<ApprovalRule, PolicyError> {
    let name = a.name.get_ref();
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
        return Err(errs.at(a.name.span(), "invalid approval name; expected letters, digits, `_` or `-`"));
    }
    let list = |l: &Option<Spanned<Vec<Spanned<String>>>>, what: &str| list_of(l, what, errs);
    let identities = match &a.identities {
        None => None,
        Some(_) => Some(
            list(&a.identities, "identities")?
                .iter()
                .map(|p| Glob::new(p.get_ref()).ok_or_else(|| errs.at(p.span(), "empty pattern")))
                .collect::<Result<_, _>>()?,
        ),
    };
    let classes =
        list(&a.classes, "classes")?.iter().map(|c| statement_class(c, errs)).collect::<Result<Vec<_>, _>>()?;
    let tables = list(&a.tables, "tables")?.iter().map(|t| table_glob(t, errs)).collect::<Result<Vec<_>, _>>()?;
    let columns = list(&a.columns, "columns")?.iter().map(|p| column_glob(p, errs)).collect::<Result<Vec<_>, _>>()?;
    if classes.is_empty() && tables.is_empty() && columns.is_empty() {
        return Err(errs.at(
            a.name.span(),
            "approval rule holds nothing; expected `classes`, `tables` and/or `columns` (all listed must match)",
        ));
    }
    let timeout = match &a.timeout {
        None => DEFAULT_APPROVAL_TIMEOUT,
        Some(t) => {
            let d = crate::approvals::parse_duration(t.get_ref()).map_err(|e| errs.at(t.span(), e.to_string()))?;
            if d.is_zero() || d > MAX_APPROVAL_TIMEOUT {
                return Err(errs.at(t.span(), "`timeout` must be between 1s and 1h"));
            }
            d
        }
    };
    Ok(ApprovalRule { name: name.clone(), identities, classes, tables, columns, timeout })
}

fn generalize(r: &RawRule, errs: &Errors<'_>) -> Result<Generalize, PolicyError> {
    let Some(to) = &r.to else {
        return Err(errs.at(
            r.action.span(),
            "action \"generalize\" needs `to`; expected one of hour, day, month, year, network, bucket",
        ));
    };
    let to = *to.get_ref();
    let not_for = |field: &str, span: Option<Range<usize>>, wanted: &str| match span {
        Some(span) => Err(errs.at(span, format!("`{field}` applies only to to = \"{wanted}\""))),
        None => Ok(()),
    };
    if to != GeneralizeTo::Bucket {
        not_for("bucket", r.bucket.as_ref().map(Spanned::span), "bucket")?;
    }
    if to != GeneralizeTo::Network {
        not_for("ipv4_prefix", r.ipv4_prefix.as_ref().map(Spanned::span), "network")?;
        not_for("ipv6_prefix", r.ipv6_prefix.as_ref().map(Spanned::span), "network")?;
    }
    Ok(match to {
        GeneralizeTo::Hour => Generalize::Hour,
        GeneralizeTo::Day => Generalize::Day,
        GeneralizeTo::Month => Generalize::Month,
        GeneralizeTo::Year => Generalize::Year,
        GeneralizeTo::Network => {
            let v4 = r.ipv4_prefix.as_ref().map_or(Ok(24), |p| {
                if *p.get_ref() <= 32 {
                    Ok(*p.get_ref())
                } else {
                    Err(errs.at(p.span(), "expected a prefix length of 0 to 32"))
                }
            })?;
            let v6 = r.ipv6_prefix.as_ref().map_or(Ok(64), |p| {
                if *p.get_ref() <= 128 {
                    Ok(*p.get_ref())
                } else {
                    Err(errs.at(p.span(), "expected a prefix length of 0 to 128"))
                }
            })?;
            Generalize::Network { v4, v6 }
        }
        GeneralizeTo::Bucket => match &r.bucket {
            Some(b) if *b.get_ref() > 0 => Generalize::Bucket(*b.get_ref()),
            Some(b) => return Err(errs.at(b.span(), "expected a bucket size greater than 0")),
            None => return Err(errs.at(r.action.span(), "to = \"bucket\" needs `bucket` = size (e.g. 1000)")),
        },
    })
}

fn load_keys(
    raw: Option<&Spanned<RawPseudonymize>>,
    used_at: Option<Range<usize>>,
    errs: &Errors<'_>,
    env: EnvLookup<'_>,
) -> Result<Keys, PolicyError> {
    use crate::masking::pseudonym::MIN_KEY_LEN;
    let Some(raw) = raw else {
        return match used_at {
            Some(span) => Err(errs.at(
                span,
                "action \"pseudonymize\" needs a key; expected a [pseudonymize] table with key_env or key_file",
            )),
            None => Ok(Keys::none()),
        };
    };
    let p = raw.get_ref();
    let (secret, span, source) = match (&p.key_env, &p.key_file) {
        (Some(_), Some(file)) => return Err(errs.at(file.span(), "set either key_env or key_file, not both")),
        (None, None) => return Err(errs.at(raw.span(), "[pseudonymize] needs key_env or key_file")),
        (Some(var), None) => (env(var.get_ref()), var.span(), format!("environment variable {}", var.get_ref())),
        (None, Some(file)) => {
            let secret = match std::fs::read_to_string(file.get_ref()) {
                Ok(s) => Some(s),
                Err(e) if used_at.is_some() => {
                    return Err(errs.at(file.span(), format!("cannot read key file {}: {}", file.get_ref(), e.kind())));
                }
                Err(_) => None,
            };
            (secret, file.span(), format!("key file {}", file.get_ref()))
        }
    };
    let Some(secret) = secret else {
        return match used_at {
            Some(_) => Err(errs.at(span, format!("{source} is not set; action \"pseudonymize\" needs its key"))),
            None => Ok(Keys::none()),
        };
    };
    Keys::new(secret.trim().as_bytes())
        .ok_or_else(|| errs.at(span, format!("the key in {source} is shorter than {MIN_KEY_LEN} bytes")))
}
