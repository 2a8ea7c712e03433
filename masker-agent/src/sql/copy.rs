//! Reading a `COPY ... TO STDOUT` statement well enough to mask its output,
//! with PostgreSQL's own parser.
//!
//! `CopyOutResponse` gives only the overall format and a column count: what
//! the data is (a table's columns, or a query's output), and how text is
//! laid out (CSV or text, delimiter, quote, NULL marker, header), is known
//! only from the statement. Every option is read here; an option whose
//! output masker could not parse and re-emit correctly is refused before the
//! statement reaches the server ([`CopyParseError`]), since a wrong guess
//! would leak.

use pg_query::NodeEnum as N;
use pg_query::protobuf::{self as pb, Node};

use super::RelName;

/// The text layout of the COPY data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyFormat {
    Text,
    Csv { header: bool },
    Binary,
}

/// What a `COPY ... TO STDOUT` sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopySource {
    /// A table's columns (all, or those listed, in that order).
    Table { relation: RelName, columns: Option<Vec<String>> },
    /// A query's output columns (traced as the statement's output).
    Query,
}

/// A `COPY ... TO STDOUT` statement as masker reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyTo {
    pub source: CopySource,
    pub format: CopyFormat,
    /// `DELIMITER` (one byte), when given.
    pub delimiter: Option<u8>,
    /// `NULL` marker, when given.
    pub null: Option<Vec<u8>>,
    /// `QUOTE` and `ESCAPE` (CSV, one byte each), when given.
    pub quote: Option<u8>,
    pub escape: Option<u8>,
    /// Text format with `HEADER` (PostgreSQL 15+).
    pub text_header: bool,
}

/// Why a COPY statement cannot be masked. Names the construct, never a
/// value of the statement.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CopyParseError {
    #[error("not a COPY statement")]
    NotCopy,
    #[error("only COPY ... TO STDOUT is relayed (not to a file or program)")]
    NotToStdout,
    #[error("unknown COPY format")]
    Format,
    #[error("COPY option {0} must be a single one-byte character while masking")]
    SingleByte(&'static str),
    #[error("COPY with an ENCODING other than UTF8 is not supported while masking")]
    Encoding,
    /// An option masker does not model (its name as PostgreSQL spells it).
    #[error("COPY option {0} is not supported while masking")]
    Option(String),
    #[error("the statement does not parse")]
    Parse,
}

/// Reads statement `index` of `sql` (see [`copy_to`]).
pub fn parse_copy_to_stdout(sql: &str, index: usize) -> Result<CopyTo, CopyParseError> {
    super::with_parse_stack(sql, || parse_copy_statement(sql, index))
}

fn parse_copy_statement(sql: &str, index: usize) -> Result<CopyTo, CopyParseError> {
    let parsed = pg_query::parse(sql, 0).map_err(|_| CopyParseError::Parse)?;
    let stmt = parsed.protobuf.stmts.get(index).ok_or(CopyParseError::NotCopy)?;
    match stmt.stmt.as_deref().and_then(|n| n.node.as_ref()) {
        Some(N::CopyStmt(c)) => copy_to(c),
        _ => Err(CopyParseError::NotCopy),
    }
}

fn string_of(n: &Node) -> Option<&str> {
    match n.node.as_ref()? {
        N::String(s) => Some(&s.sval),
        _ => None,
    }
}

/// A DefElem argument as text: a string, an identifier, a boolean or a
/// number as written.
fn arg_text(arg: Option<&Node>) -> Option<String> {
    match arg?.node.as_ref()? {
        N::String(s) => Some(s.sval.clone()),
        N::Boolean(b) => Some(if b.boolval { "true" } else { "false" }.into()),
        N::Integer(i) => Some(i.ival.to_string()),
        N::AConst(c) => match c.val.as_ref()? {
            pb::a_const::Val::Sval(s) => Some(s.sval.clone()),
            pb::a_const::Val::Boolval(b) => Some(if b.boolval { "true" } else { "false" }.into()),
            pb::a_const::Val::Ival(i) => Some(i.ival.to_string()),
            _ => None,
        },
        _ => None,
    }
}

fn truthy(arg: Option<&Node>) -> bool {
    match arg {
        // `HEADER` alone means true.
        None => true,
        Some(_) => arg_text(arg).is_some_and(|v| matches!(v.to_ascii_lowercase().as_str(), "true" | "on" | "1")),
    }
}

fn one_byte(arg: Option<&Node>, name: &'static str) -> Result<u8, CopyParseError> {
    match arg_text(arg).as_deref().map(str::as_bytes) {
        Some([b]) => Ok(*b),
        _ => Err(CopyParseError::SingleByte(name)),
    }
}

/// Reads a COPY statement: `Ok` when it is a `COPY ... TO STDOUT` whose
/// output masker can mask, with the layout to parse it by.
pub fn copy_to(c: &pb::CopyStmt) -> Result<CopyTo, CopyParseError> {
    if c.is_from || c.is_program || !c.filename.is_empty() {
        return Err(CopyParseError::NotToStdout);
    }
    let source = match &c.relation {
        Some(r) if c.query.is_none() => CopySource::Table {
            relation: RelName {
                schema: (!r.schemaname.is_empty()).then(|| r.schemaname.clone()),
                name: r.relname.clone(),
            },
            columns: (!c.attlist.is_empty())
                .then(|| c.attlist.iter().filter_map(string_of).map(str::to_string).collect()),
        },
        _ => CopySource::Query,
    };
    let mut format = "text".to_string();
    let mut header = false;
    let mut copy = CopyTo {
        source,
        format: CopyFormat::Text,
        delimiter: None,
        null: None,
        quote: None,
        escape: None,
        text_header: false,
    };
    for o in &c.options {
        let Some(N::DefElem(d)) = o.node.as_ref() else { return Err(CopyParseError::Option("?".into())) };
        let arg = d.arg.as_deref();
        match d.defname.as_str() {
            "format" => format = arg_text(arg).ok_or(CopyParseError::Format)?.to_ascii_lowercase(),
            "header" => {
                if arg_text(arg).is_some_and(|v| v.eq_ignore_ascii_case("match")) {
                    return Err(CopyParseError::Option("HEADER MATCH".into()));
                }
                header = truthy(arg);
            }
            "delimiter" => copy.delimiter = Some(one_byte(arg, "DELIMITER")?),
            "null" => copy.null = Some(arg_text(arg).ok_or(CopyParseError::Option("NULL".into()))?.into_bytes()),
            "quote" => copy.quote = Some(one_byte(arg, "QUOTE")?),
            "escape" => copy.escape = Some(one_byte(arg, "ESCAPE")?),
            // Quoting of output values only: masked CSV stays valid.
            "force_quote" => {}
            "encoding" => {
                let e = arg_text(arg).unwrap_or_default().to_ascii_lowercase().replace(['-', '_'], "");
                if e != "utf8" && e != "unicode" {
                    return Err(CopyParseError::Encoding);
                }
            }
            other => return Err(CopyParseError::Option(other.to_ascii_uppercase())),
        }
    }
    copy.format = match format.as_str() {
        "text" => {
            copy.text_header = header;
            CopyFormat::Text
        }
        "csv" => CopyFormat::Csv { header },
        "binary" => CopyFormat::Binary,
        _ => return Err(CopyParseError::Format),
    };
    Ok(copy)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(sql: &str) -> Result<CopyTo, CopyParseError> {
        parse_copy_to_stdout(sql, 0)
    }

    #[test]
    fn accepted_forms() {
        let c = parse("copy customers to stdout").unwrap();
        assert_eq!(
            c.source,
            CopySource::Table { relation: RelName { schema: None, name: "customers".into() }, columns: None }
        );
        assert_eq!(c.format, CopyFormat::Text);
        let c = parse("COPY public.\"Customers\" (id, \"Email\") TO STDOUT WITH (FORMAT csv, HEADER);").unwrap();
        assert_eq!(
            c.source,
            CopySource::Table {
                relation: RelName { schema: Some("public".into()), name: "Customers".into() },
                columns: Some(vec!["id".to_string(), "Email".to_string()]),
            }
        );
        assert_eq!(c.format, CopyFormat::Csv { header: true });
        assert_eq!(parse("copy t to stdout binary").unwrap().format, CopyFormat::Binary);
        assert_eq!(parse("/* x */ copy t to stdout (format binary)").unwrap().format, CopyFormat::Binary);
        assert_eq!(parse("copy t to stdout csv header").unwrap().format, CopyFormat::Csv { header: true });
        let c = parse(
            "copy (select id from t) to stdout with (format csv, delimiter '|', null 'NA', quote '''', force_quote *)",
        )
        .unwrap();
        assert_eq!(c.source, CopySource::Query);
        assert_eq!((c.delimiter, c.null.as_deref(), c.quote), (Some(b'|'), Some(&b"NA"[..]), Some(b'\'')));
        assert!(parse("copy t to stdout (encoding 'UTF8')").is_ok());
        assert_eq!(parse("copy t to stdout (header)").map(|c| c.text_header), Ok(true));
        // The second statement of a string.
        assert!(parse_copy_to_stdout("select 1; copy t to stdout", 1).is_ok());
    }

    #[test]
    fn refused_forms() {
        for (sql, why) in [
            ("copy t from stdin", CopyParseError::NotToStdout),
            ("copy t to '/tmp/x'", CopyParseError::NotToStdout),
            ("copy t to program 'cat'", CopyParseError::NotToStdout),
            ("select 1", CopyParseError::NotCopy),
            ("copy t to stdout (delimiter '||')", CopyParseError::SingleByte("DELIMITER")),
            ("copy t to stdout (encoding 'LATIN1')", CopyParseError::Encoding),
            ("copy t to stdout (format xml)", CopyParseError::Format),
            ("copy t to stdout (freeze)", CopyParseError::Option("FREEZE".into())),
            ("copy t to stdout (force_not_null (a))", CopyParseError::Option("FORCE_NOT_NULL".into())),
        ] {
            assert_eq!(parse(sql), Err(why), "{sql}");
        }
    }
}
