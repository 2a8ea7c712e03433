//! What to do with one column, and the counters of what was done.

use std::fmt;
use std::sync::Arc;

/// The action applied to every cell of one output column.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ColumnAction {
    /// Forward the value unchanged, whatever its type.
    Allow,
    /// A fixed placeholder valid for the type (`REDACTED`, 0, 1970-01-01, ...).
    Redact,
    /// SQL NULL.
    Null,
    /// Keep the first `first` and last `last` characters of text, `*` between.
    /// A value with no more than `first + last` characters is masked entirely.
    Partial { first: u16, last: u16 },
    /// Keep the domain of an email address, hide the local part (`****@example.com`).
    Email,
    /// A keyed, deterministic token (HMAC-SHA256). With `format_preserving`,
    /// digits stay digits, letters stay letters and emails stay emails.
    Pseudonymize { format_preserving: bool },
    /// Coarsen the value (dates, timestamps, addresses, numbers).
    Generalize(Generalize),
    /// Scan the content with the PII detectors and mask what they find.
    Detect,
    /// SQL text written by people and kept in the catalog (a view's
    /// definition, a function body, a default): the literals that stand
    /// against a classified column are replaced, the rest stays (see
    /// [`crate::sql::definition`]).
    Definition(ClassifiedNames),
}

/// Which column names count as classified when a definition is scrubbed:
/// compared by identity (one per policy), as the policy decides. Holds the
/// scrubbed form of the definitions it has seen: catalog queries (`\d`,
/// ORM reflection, `pg_dump`) send the same defaults and view texts again
/// and again, and parsing each every time dominated their cost.
#[derive(Clone)]
pub struct ClassifiedNames(Arc<Names>);

type Classify = dyn Fn(&str) -> bool + Send + Sync;

struct Names {
    classify: Box<Classify>,
    /// Definition text to its scrubbed form (`None`: unchanged).
    scrubbed: std::sync::Mutex<std::collections::HashMap<Box<str>, Option<Arc<str>>>>,
}

/// Definitions remembered per policy at most (then the memory starts over),
/// and the longest one remembered.
const SCRUBBED_ENTRIES: usize = 4096;
const SCRUBBED_TEXT: usize = 16 * 1024;

impl ClassifiedNames {
    /// Column names (lower case, unqualified) for which `f` holds.
    pub fn new(f: impl Fn(&str) -> bool + Send + Sync + 'static) -> Self {
        ClassifiedNames(Arc::new(Names { classify: Box::new(f), scrubbed: Default::default() }))
    }

    /// `text` with the literals against classified columns replaced (see
    /// [`crate::sql::definition::scrub_definition`]); `None` when nothing
    /// is replaced.
    pub fn scrub(&self, text: &str) -> Option<Arc<str>> {
        let lock = || self.0.scrubbed.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(known) = lock().get(text) {
            return known.clone();
        }
        let classify = &*self.0.classify;
        let scrubbed: Option<Arc<str>> = match crate::sql::definition::scrub_definition(text, classify) {
            std::borrow::Cow::Borrowed(_) => None,
            std::borrow::Cow::Owned(s) => Some(s.into()),
        };
        if text.len() <= SCRUBBED_TEXT {
            let mut memory = lock();
            if memory.len() >= SCRUBBED_ENTRIES {
                memory.clear();
            }
            memory.insert(text.into(), scrubbed.clone());
        }
        scrubbed
    }
}

impl fmt::Debug for ClassifiedNames {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClassifiedNames")
    }
}

impl PartialEq for ClassifiedNames {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for ClassifiedNames {}

impl std::hash::Hash for ClassifiedNames {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        (Arc::as_ptr(&self.0) as usize).hash(state);
    }
}

/// How [`ColumnAction::Generalize`] coarsens a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Generalize {
    /// Timestamps to the hour; times to the hour.
    Hour,
    /// Timestamps to midnight; times to 00:00:00.
    Day,
    /// Dates and timestamps to the first day of their month.
    Month,
    /// Dates and timestamps to January 1st of their year.
    Year,
    /// inet/cidr to their network with these prefix lengths.
    Network { v4: u8, v6: u8 },
    /// Numbers to the floor of their bucket (`floor(v / size) * size`).
    Bucket(u64),
}

impl ColumnAction {
    /// The counter this action's masked cells go to; `None` for [`ColumnAction::Allow`].
    pub fn kind(&self) -> Option<ActionKind> {
        Some(match self {
            ColumnAction::Allow => return None,
            ColumnAction::Redact => ActionKind::Redact,
            ColumnAction::Null => ActionKind::Null,
            ColumnAction::Partial { .. } => ActionKind::Partial,
            ColumnAction::Email => ActionKind::Email,
            ColumnAction::Pseudonymize { .. } => ActionKind::Pseudonymize,
            ColumnAction::Generalize(_) => ActionKind::Generalize,
            ColumnAction::Detect => ActionKind::Detect,
            ColumnAction::Definition(_) => ActionKind::Definition,
        })
    }
}

/// A masking action without its parameters, for counters and audit events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ActionKind {
    Redact,
    Null,
    Partial,
    Email,
    Pseudonymize,
    Generalize,
    Detect,
    Definition,
}

impl ActionKind {
    pub const ALL: [ActionKind; 8] = [
        ActionKind::Redact,
        ActionKind::Null,
        ActionKind::Partial,
        ActionKind::Email,
        ActionKind::Pseudonymize,
        ActionKind::Generalize,
        ActionKind::Detect,
        ActionKind::Definition,
    ];

    /// The name used in the policy file and in metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            ActionKind::Redact => "redact",
            ActionKind::Null => "null",
            ActionKind::Partial => "partial",
            ActionKind::Email => "email",
            ActionKind::Pseudonymize => "pseudonymize",
            ActionKind::Generalize => "generalize",
            ActionKind::Detect => "detect",
            ActionKind::Definition => "definition",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for ActionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Counters of masked cells, per action. Cells an action changed (for
/// [`ActionKind::Detect`]: cells in which something was found) count once.
/// `fallback_null` counts cells set to NULL because their action could not be
/// applied to the column's type or the value could not be decoded (fail closed).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RowStats {
    counts: [u64; 8],
    /// Cells nulled because the action does not fit the type or value.
    pub fallback_null: u64,
}

impl RowStats {
    /// Masked cells for `kind`.
    pub fn get(&self, kind: ActionKind) -> u64 {
        self.counts[kind.index()]
    }

    /// All masked cells.
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    pub(crate) fn bump(&mut self, kind: ActionKind) {
        self.counts[kind.index()] += 1;
    }

    /// Adds `other`'s counters to these.
    pub fn add(&mut self, other: &RowStats) {
        for (a, b) in self.counts.iter_mut().zip(other.counts) {
            *a += b;
        }
        self.fallback_null += other.fallback_null;
    }

    /// `(kind, count)` for every action with a non-zero count.
    pub fn iter(&self) -> impl Iterator<Item = (ActionKind, u64)> + '_ {
        ActionKind::ALL.into_iter().map(|k| (k, self.get(k))).filter(|(_, n)| *n > 0)
    }
}
