//! What the role can read: every column of every table, partitioned table,
//! view, materialized view and foreign table outside the system schemas on
//! which it has `SELECT` (and `USAGE` on the schema), with its type and
//! comment, from the catalog. Partitions are covered by their parent.

use tokio_postgres::Client;

use super::classify::TypeClass;
use crate::policy::glob::Glob;

/// What kind of relation a column belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelKind {
    Table,
    Partitioned,
    View,
    MaterializedView,
    Foreign,
}

impl RelKind {
    fn from_relkind(k: &str) -> Option<RelKind> {
        Some(match k {
            "r" => RelKind::Table,
            "p" => RelKind::Partitioned,
            "v" => RelKind::View,
            "m" => RelKind::MaterializedView,
            "f" => RelKind::Foreign,
            _ => return None,
        })
    }

    /// For reports.
    pub fn label(self) -> &'static str {
        match self {
            RelKind::Table => "table",
            RelKind::Partitioned => "partitioned table",
            RelKind::View => "view",
            RelKind::MaterializedView => "materialized view",
            RelKind::Foreign => "foreign table",
        }
    }

    /// Whether `TABLESAMPLE` applies (it reads the relation's own pages).
    pub fn samples_pages(self) -> bool {
        matches!(self, RelKind::Table | RelKind::Partitioned | RelKind::MaterializedView)
    }
}

/// One readable column.
#[derive(Debug, Clone)]
pub struct Column {
    pub name: String,
    /// As `format_type` prints it (`character varying(80)`, `inet`).
    pub type_name: String,
    pub class: TypeClass,
    pub comment: Option<String>,
}

/// One relation with its readable columns, in attribute order.
#[derive(Debug, Clone)]
pub struct Relation {
    pub schema: String,
    pub name: String,
    pub kind: RelKind,
    /// The planner's row estimate (`pg_class.reltuples`; negative: never
    /// analyzed).
    pub estimated_rows: f64,
    pub columns: Vec<Column>,
}

impl Relation {
    /// `schema.name` for messages.
    pub fn qualified(&self) -> String {
        format!("{}.{}", self.schema, self.name)
    }
}

const COLUMNS: &str = "
SELECT n.nspname, c.relname, c.relkind::text, c.reltuples::float8,
       a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod),
       bt.typname, bt.typcategory::text, pg_catalog.col_description(c.oid, a.attnum)
  FROM pg_catalog.pg_class c
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
  JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
  JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
  JOIN pg_catalog.pg_type bt ON bt.oid = CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.oid END
 WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f')
   AND NOT c.relispartition
   AND n.nspname NOT IN ('pg_catalog', 'information_schema')
   AND n.nspname NOT LIKE 'pg\\_toast%'
   AND n.nspname NOT LIKE 'pg\\_temp\\_%'
   AND pg_catalog.has_schema_privilege(n.oid, 'USAGE')
   AND pg_catalog.has_column_privilege(c.oid, a.attnum, 'SELECT')
 ORDER BY n.nspname, c.relname, a.attnum";

/// The readable relations in schemas matching `schemas` (all when empty).
pub(crate) async fn list(client: &Client, schemas: &[Glob]) -> Result<Vec<Relation>, tokio_postgres::Error> {
    let rows = client.query(COLUMNS, &[]).await?;
    let mut out: Vec<Relation> = Vec::new();
    for row in rows {
        let schema: String = row.try_get(0)?;
        if !schemas.is_empty() && !schemas.iter().any(|g| g.matches(&schema)) {
            continue;
        }
        let name: String = row.try_get(1)?;
        let Some(kind) = RelKind::from_relkind(&row.try_get::<_, String>(2)?) else { continue };
        let typname: String = row.try_get(6)?;
        let typcategory: String = row.try_get(7)?;
        let column = Column {
            name: row.try_get(4)?,
            type_name: row.try_get(5)?,
            class: TypeClass::from_catalog(&typname, &typcategory),
            comment: row.try_get(8)?,
        };
        match out.last_mut() {
            Some(last) if last.schema == schema && last.name == name => last.columns.push(column),
            _ => out.push(Relation { schema, name, kind, estimated_rows: row.try_get(3)?, columns: vec![column] }),
        }
    }
    Ok(out)
}

/// `name` as a quoted SQL identifier.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_identifiers() {
        assert_eq!(quote_ident("a"), "\"a\"");
        assert_eq!(quote_ident("we\"ird"), "\"we\"\"ird\"");
    }
}
