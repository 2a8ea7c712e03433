//! Globs of the policy file: identifiers (ASCII case-insensitive), claim
//! values (case-sensitive), `schema.table` patterns and claim sets.

/// A glob over identifiers: `*` any run, `?` one character, ASCII
/// case-insensitive.
#[derive(Debug, Clone)]
pub(crate) struct Glob(Box<[u8]>);

impl Glob {
    pub(crate) fn new(pattern: &str) -> Option<Glob> {
        (!pattern.is_empty()).then(|| Glob(pattern.to_ascii_lowercase().into_bytes().into_boxed_slice()))
    }

    pub(crate) fn matches(&self, s: &str) -> bool {
        glob_match(&self.0, s.as_bytes(), true)
    }
}

/// A glob over claim values: `*` any run, `?` one byte, **case-sensitive**
/// (`refs/heads/MAIN` is not `refs/heads/main`: git refs, repository paths
/// and ids differ by case, and folding would let a look-alike branch pass).
#[derive(Debug, Clone)]
pub(crate) struct ClaimGlob(Box<[u8]>);

impl ClaimGlob {
    pub(crate) fn new(pattern: &str) -> ClaimGlob {
        ClaimGlob(pattern.as_bytes().into())
    }

    pub(crate) fn matches(&self, s: &str) -> bool {
        glob_match(&self.0, s.as_bytes(), false)
    }
}

/// Whether `s` matches pattern `p` (`*`, `?`); with `fold`, `p` is lower
/// case and `s` is compared ASCII case-insensitively.
fn glob_match(p: &[u8], s: &[u8], fold: bool) -> bool {
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    let lower = |c: u8| if fold { c.to_ascii_lowercase() } else { c };
    while si < s.len() {
        if pi < p.len() && (p[pi] == b'?' || p[pi] == lower(s[si])) {
            pi += 1;
            si += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, si));
            pi += 1;
        } else if let Some((sp, ss)) = star {
            pi = sp + 1;
            si = ss + 1;
            star = Some((sp, ss + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// A `deny_tables` pattern: `table` or `schema.table`, each part a glob.
#[derive(Debug, Clone)]
pub(crate) struct TableGlob {
    pub(crate) schema: Option<Glob>,
    pub(crate) table: Glob,
}

impl TableGlob {
    /// Whether relation `schema.name` matches; a relation the agent could not
    /// resolve (`schema` is `None`) matches on its name alone (fail closed).
    pub(crate) fn matches(&self, schema: Option<&str>, name: &str) -> bool {
        self.table.matches(name) && self.schema.as_ref().is_none_or(|s| schema.is_none_or(|rs| s.matches(rs)))
    }
}

/// What `claims` of a rule or `[[identity]]` block require of a session's
/// verified token: every listed claim present and matching its pattern.
#[derive(Debug, Clone)]
pub(crate) struct ClaimsMatch(pub(super) Vec<(String, ClaimGlob)>);

impl ClaimsMatch {
    /// Whether `claims` (of a verified token; `None` without one) satisfy
    /// every pattern. String claims are matched as they are, any other
    /// value as its JSON text (`42`, `true`, `["a","b"]`); a missing claim
    /// does not match.
    pub(crate) fn matches(&self, claims: Option<&crate::identity::Claims>) -> bool {
        let Some(claims) = claims else { return false };
        self.0.iter().all(|(name, pattern)| match claims.get(name) {
            Some(serde_json::Value::String(s)) => pattern.matches(s),
            Some(other) => pattern.matches(&other.to_string()),
            None => false,
        })
    }
}
