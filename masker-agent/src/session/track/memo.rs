//! What a session already worked out about a statement, reused while
//! nothing it depends on changed.
//!
//! Deciding a statement (is it tainted, may it run, what is each of its
//! result columns masked with) follows its lineage through the session
//! model and the catalog. The answer depends only on the statement's
//! analysis, the session model, the catalog and the session's policy (fixed
//! for the session), so a client that sends the same statement again (the
//! same shape with other literals, or a prepared statement executed again)
//! gets the answer of the first time as long as:
//!
//! - the analysis is the same one (texts of one shape share it: see
//!   [`crate::sql::analyze`]); the entry holds it, so its address is not
//!   reused while the entry lives;
//! - the session model has the same [`SessionModel::revision`];
//! - the catalog has the same [`Catalog::generation`] (no DDL seen since);
//! - the entry is younger than [`MEMO_TTL`], so that what the catalog
//!   learns when its own entries expire (DDL made outside masker) is seen
//!   that much later at most.
//!
//! Nothing here changes a decision; only how often it is worked out.
//!
//! [`SessionModel::revision`]: super::model::SessionModel::revision
//! [`Catalog::generation`]: crate::plan::catalog::Catalog::generation

use rustc_hash::FxHashMap;
use std::sync::Arc;
use std::time::Duration;

use super::expect::Analyzed;
use crate::masking::RowPlan;
use crate::wire::ResultFormats;

/// How long a worked-out decision is reused at most.
pub const MEMO_TTL: Duration = Duration::from_secs(1);

/// Statements remembered per session at most; beyond, the memo starts over
/// (a client generating endless distinct statements pays the full work).
const ENTRIES: usize = 256;

/// Row plans remembered per statement at most (one per distinct
/// RowDescription and result formats).
const PLANS: usize = 4;

/// The index standing for a whole text (all its statements) rather than
/// one statement of it.
pub const WHOLE_TEXT: usize = usize::MAX;

/// Why a text must be refused, and by which kind of rule (`None`: it may
/// run).
pub type Refusal = Option<(&'static str, String)>;

/// What an entry was worked out under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// The session model's revision.
    pub model: u64,
    /// The catalog's generation.
    pub catalog: u64,
}

/// A row plan with the RowDescription body and result formats it was made
/// for.
type KeptPlan = (Box<[u8]>, Option<ResultFormats>, Arc<RowPlan>);

/// What is known about one statement of one analysis.
#[derive(Default)]
pub struct Entry {
    /// Whether it reads classified data (see the server side's attribution).
    pub tainted: Option<bool>,
    /// Why it (the whole text) must be refused, and by which kind of rule
    /// (`None` inside: it may run).
    pub refusal: Option<Refusal>,
    /// Row plans by RowDescription body and Bind result formats.
    plans: Vec<KeptPlan>,
}

impl Entry {
    /// The row plan made for a RowDescription with body `fields` and
    /// result formats `formats`, if one was.
    pub fn plan(&self, fields: &[u8], formats: Option<&ResultFormats>) -> Option<Arc<RowPlan>> {
        self.plans.iter().find(|(f, fm, _)| &**f == fields && fm.as_ref() == formats).map(|(_, _, p)| p.clone())
    }

    /// Remembers `plan` for `fields` and `formats`.
    pub fn add_plan(&mut self, fields: &[u8], formats: Option<&ResultFormats>, plan: Arc<RowPlan>) {
        if self.plans.len() >= PLANS {
            self.plans.remove(0);
        }
        self.plans.push((fields.into(), formats.cloned(), plan));
    }
}

struct Slot {
    /// Keeps the analysis (and so the key's address) alive.
    _analysis: Analyzed,
    stamp: Stamp,
    /// When it was worked out ([`coarse_now`]).
    since: Duration,
    entry: Entry,
}

/// The monotonic clock as of the last timer tick (a few milliseconds
/// coarse, and read without asking the clock source: several entries are
/// consulted for every statement, and [`MEMO_TTL`] is a second).
fn coarse_now() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::MonotonicCoarse);
    Duration::new(t.tv_sec.try_into().unwrap_or(0), t.tv_nsec.try_into().unwrap_or(0))
}

/// A session's memo of worked-out decisions.
#[derive(Default)]
pub struct Memo {
    slots: FxHashMap<(usize, usize), Slot>,
}

impl Memo {
    /// The entry of statement `index` (or [`WHOLE_TEXT`]) of `analysis` as
    /// of `stamp`: what was worked out under the same stamp less than
    /// [`MEMO_TTL`] ago, else an empty entry to fill.
    pub fn entry(&mut self, analysis: &Analyzed, index: usize, stamp: Stamp) -> &mut Entry {
        let key = (Arc::as_ptr(analysis) as usize, index);
        let now = coarse_now();
        let fresh = self.slots.get(&key).is_some_and(|s| s.stamp == stamp && now.saturating_sub(s.since) < MEMO_TTL);
        if !fresh {
            if self.slots.len() >= ENTRIES && !self.slots.contains_key(&key) {
                self.slots.clear();
            }
            self.slots.insert(key, Slot { _analysis: analysis.clone(), stamp, since: now, entry: Entry::default() });
        }
        match self.slots.get_mut(&key) {
            Some(slot) => &mut slot.entry,
            None => unreachable!("inserted above"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::masking::ColumnAction;
    use crate::masking::pseudonym::Keys;
    use crate::wire::{Format, TypeOid};

    fn analysis(sql: &str) -> Analyzed {
        Arc::new(crate::sql::analyze_uncached(sql))
    }

    #[test]
    fn entries_hold_while_the_stamp_holds() {
        let mut memo = Memo::default();
        let a = analysis("SELECT 1");
        let stamp = Stamp { model: 1, catalog: 0 };
        memo.entry(&a, 0, stamp).tainted = Some(true);
        assert_eq!(memo.entry(&a, 0, stamp).tainted, Some(true));
        // Another statement of the text, another text, another model or
        // catalog: nothing known.
        assert_eq!(memo.entry(&a, 1, stamp).tainted, None);
        assert_eq!(memo.entry(&analysis("SELECT 1"), 0, stamp).tainted, None);
        assert_eq!(memo.entry(&a, 0, Stamp { model: 2, catalog: 0 }).tainted, None);
        memo.entry(&a, 0, stamp).tainted = Some(false);
        assert_eq!(memo.entry(&a, 0, Stamp { model: 1, catalog: 1 }).tainted, None);
    }

    #[test]
    fn plans_are_kept_per_row_description_and_formats() {
        let mut memo = Memo::default();
        let a = analysis("SELECT 1");
        let stamp = Stamp { model: 0, catalog: 0 };
        let plan = Arc::new(RowPlan::new(vec![(ColumnAction::Allow, TypeOid(23), Format::Text)], &Keys::default()));
        let entry = memo.entry(&a, 0, stamp);
        entry.add_plan(b"one", None, plan.clone());
        assert!(entry.plan(b"one", None).is_some_and(|p| Arc::ptr_eq(&p, &plan)));
        assert!(entry.plan(b"two", None).is_none());
        for i in 0..PLANS {
            entry.add_plan(format!("other {i}").as_bytes(), None, plan.clone());
        }
        assert!(entry.plan(b"one", None).is_none(), "bounded: the oldest went");
    }
}
