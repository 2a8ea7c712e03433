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
    trace::analyze_uncached(sql, plpgsql::analyze_do)
}

/// [`analyze_uncached`] with PL/pgSQL variables in scope (`name`, what was
/// assigned to it): a function body's embedded SQL.
pub fn analyze_with_variables(sql: &str, vars: &[(String, Lineage)]) -> Result<Analysis, SqlError> {
    trace::analyze_with_variables(sql, vars, plpgsql::analyze_do)
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
