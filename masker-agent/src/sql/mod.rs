//! SQL analysis: which base columns each output column of a statement is
//! derived from, and how.
//!
//! Pure, no I/O: [`analyze`] parses a query string with PostgreSQL's own
//! grammar (the `pg_query` crate wraps libpg_query) and traces every output
//! column of each statement back to the columns of the relations *as
//! written* in the SQL. Relation names are resolved to schema-qualified
//! tables, `*` is expanded and views are followed by the session, with the
//! server's catalog (`plan::lineage`).
//!
//! Whatever the tracer does not understand becomes [`How::Unknown`], which
//! the session treats as "may carry any column the statement reads" (fail
//! closed). Results are cached per statement text ([`analyze`]), so a
//! statement sent many times (or prepared once) is parsed once.

mod analysis;
pub(crate) mod copy;
pub mod definition;
pub(crate) mod normalize;
pub mod plpgsql;
mod trace;

use std::sync::Arc;

pub use analysis::{
    Analysis, Condition, Created, CreatedKind, Effect, How, Lineage, Output, RelName, Sink, SinkKind, Source, SqlError,
    Statement, StatementClass, TransactionStep,
};
pub use normalize::{cache_key, normalize, scrub_literals, shape};
pub use trace::search_path_schemas;

/// Analyzes every statement of `sql`, without the cache (`DO` bodies with
/// PostgreSQL's PL/pgSQL parser).
pub fn analyze_uncached(sql: &str) -> Result<Analysis, SqlError> {
    with_parse_stack(sql, || trace::analyze_uncached(sql, plpgsql::analyze_do))
}

/// [`analyze_uncached`] with PL/pgSQL variables in scope (`name`, what was
/// assigned to it): a function body's embedded SQL.
pub fn analyze_with_variables(sql: &str, vars: &[(String, Lineage)]) -> Result<Analysis, SqlError> {
    with_parse_stack(sql, || trace::analyze_with_variables(sql, vars, plpgsql::analyze_do))
}

/// The stack a thread needs to parse and analyse the deepest statement
/// libpg_query accepts (see [`with_parse_stack`]); the runtime's workers
/// get it.
pub const PARSE_STACK: usize = 8 << 20;

/// Runs `f`, which parses `text` and walks (and drops) its tree, on a stack
/// deep enough for the deepest tree the parser hands over.
///
/// libpg_query refuses trees nested deeper than about 800 levels (its own
/// check, sized to the calling thread's stack); decoding such a tree into
/// Rust and dropping it recurses once per level: about 1.5 MiB of stack in
/// a release build at that limit, far more unoptimised. Where enough stack
/// is left (a runtime worker has [`PARSE_STACK`]) it runs in place; a text
/// too short to nest deeply runs in place anyway; otherwise it runs on a
/// thread of its own with such a stack (libpg_query reads the thread's
/// stack bounds, so a thread it is, not a switched stack) — that costs a
/// thread start and libpg_query's set-up in it, so it is the exception.
pub(crate) fn with_parse_stack<R: Send>(text: &str, f: impl Fn() -> R + Sync) -> R {
    // Stack needed in place, with room for what the caller already uses.
    const NEEDED: usize = if cfg!(debug_assertions) { 192 << 20 } else { 4 << 20 };
    // Each level of nesting takes at least two bytes of text (`1+1+...`).
    const SHALLOW_UP_TO: usize = 256;
    const STACK: usize = if cfg!(debug_assertions) { 256 << 20 } else { PARSE_STACK };
    let shallow = !cfg!(debug_assertions) && text.len() <= SHALLOW_UP_TO;
    if shallow || stacker::remaining_stack().is_some_and(|left| left >= NEEDED) {
        return f();
    }
    let ran = std::thread::scope(|scope| {
        let thread = std::thread::Builder::new().name("masker-parse".into()).stack_size(STACK);
        thread.spawn_scoped(scope, &f).map(|h| h.join())
    });
    match ran {
        Ok(Ok(r)) => r,
        Ok(Err(panic)) => std::panic::resume_unwind(panic),
        // No thread to be had (the process is out of threads or memory):
        // here, with libpg_query's check sized to this stack.
        Err(_) => f(),
    }
}

use normalize::ShapeCache;

/// Analyzes `sql` (one or more statements), from the cache when a text of
/// the same shape (see [`cache_key`]) was analyzed before.
pub fn analyze(sql: &str) -> Arc<Result<Analysis, SqlError>> {
    static CACHE: ShapeCache<Arc<Result<Analysis, SqlError>>> = ShapeCache::new();
    CACHE.get_or_compute(sql, |sql| Arc::new(analyze_uncached(sql)))
}

/// Statement class (its policy-file name) and relations of statement
/// `index` of `sql`, as audit events record them: `unknown` when the text
/// does not parse, `empty` when it has no statement.
pub fn classify(sql: &str, index: usize) -> (&'static str, Vec<String>) {
    let analysis = analyze(sql);
    match analysis.as_ref() {
        Ok(a) => match a.statements.get(index).or(a.statements.last()) {
            Some(s) => (s.class.name(), s.relations.iter().map(|r| r.to_string()).collect()),
            None => ("empty", Vec::new()),
        },
        Err(_) => ("unknown", Vec::new()),
    }
}

#[cfg(test)]
mod tests;
