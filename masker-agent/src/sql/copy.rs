//! Reading a `COPY ... TO STDOUT` statement well enough to mask its output.
//!
//! `CopyOutResponse` gives only the overall format and a column count: which
//! table and columns the data comes from, and whether text is CSV, is known
//! only from the statement. This reads the forms whose columns are exactly a
//! table's columns; anything else (`COPY (query)`, custom delimiters, quote or
//! NULL strings, several statements in one query) is refused by the caller,
//! since a wrong guess would leak.

/// The text layout of the COPY data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyFormat {
    Text,
    Csv { header: bool },
    Binary,
}

/// A `COPY table [(columns)] TO STDOUT` statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyToStdout {
    pub schema: Option<String>,
    pub table: String,
    pub columns: Option<Vec<String>>,
    pub format: CopyFormat,
}

/// Why a COPY statement cannot be masked. Names the construct, never a
/// value of the statement.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CopyParseError {
    #[error("unterminated comment")]
    UnterminatedComment,
    #[error("unterminated quoted identifier")]
    UnterminatedIdentifier,
    #[error("unterminated string")]
    UnterminatedString,
    #[error("COPY in a query string with several statements")]
    SeveralStatements,
    #[error("not a COPY statement")]
    NotCopy,
    #[error("COPY (query) has no per-column plan")]
    Query,
    #[error("expected a table name")]
    TableName,
    #[error("malformed column list")]
    ColumnList,
    #[error("only COPY ... TO STDOUT is relayed")]
    NotToStdout,
    #[error("unknown COPY format")]
    Format,
    #[error("COPY with an ENCODING option")]
    Encoding,
    /// An option other than the format and header (a keyword, upper case).
    #[error("COPY option {0} is not supported while masking")]
    Option(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    /// Identifier or keyword, case-folded unless it was quoted.
    Word(String, bool),
    Punct(char),
    Str,
    Other,
}

fn tokenize(sql: &str) -> Result<Vec<Tok>, CopyParseError> {
    let mut toks = Vec::new();
    let mut chars = sql.char_indices().peekable();
    while let Some(&(i, c)) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
        } else if sql[i..].starts_with("--") {
            while chars.next_if(|&(_, c)| c != '\n').is_some() {}
        } else if sql[i..].starts_with("/*") {
            let end = sql[i + 2..].find("*/").ok_or(CopyParseError::UnterminatedComment)?;
            let stop = i + 2 + end + 2;
            while chars.next_if(|&(j, _)| j < stop).is_some() {}
        } else if c == '"' {
            chars.next();
            let mut word = String::new();
            loop {
                match chars.next() {
                    Some((_, '"')) if chars.next_if(|&(_, c)| c == '"').is_some() => word.push('"'),
                    Some((_, '"')) => break,
                    Some((_, c)) => word.push(c),
                    None => return Err(CopyParseError::UnterminatedIdentifier),
                }
            }
            toks.push(Tok::Word(word, true));
        } else if c == '\'' {
            chars.next();
            loop {
                match chars.next() {
                    Some((_, '\'')) if chars.next_if(|&(_, c)| c == '\'').is_some() => {}
                    Some((_, '\'')) => break,
                    Some(_) => {}
                    None => return Err(CopyParseError::UnterminatedString),
                }
            }
            toks.push(Tok::Str);
        } else if c.is_alphanumeric() || c == '_' {
            let mut word = String::new();
            while let Some((_, c)) = chars.next_if(|&(_, c)| c.is_alphanumeric() || c == '_' || c == '$') {
                word.push(c.to_ascii_lowercase());
            }
            toks.push(Tok::Word(word, false));
        } else if "(),.;".contains(c) {
            chars.next();
            toks.push(Tok::Punct(c));
        } else {
            chars.next();
            toks.push(Tok::Other);
        }
    }
    while toks.last() == Some(&Tok::Punct(';')) {
        toks.pop();
    }
    Ok(toks)
}

/// Reads `sql` as one `COPY ... TO STDOUT` statement whose output columns are
/// table columns. The error says why it cannot be masked.
pub fn parse_copy_to_stdout(sql: &str) -> Result<CopyToStdout, CopyParseError> {
    let toks = tokenize(sql)?;
    if toks.contains(&Tok::Punct(';')) {
        return Err(CopyParseError::SeveralStatements);
    }
    let mut it = toks.into_iter().peekable();
    let kw = |t: &Option<Tok>, k: &str| matches!(t, Some(Tok::Word(w, false)) if w == k);
    if !kw(&it.next(), "copy") {
        return Err(CopyParseError::NotCopy);
    }
    if it.peek() == Some(&Tok::Punct('(')) {
        return Err(CopyParseError::Query);
    }
    if matches!(it.peek(), Some(Tok::Word(w, false)) if w == "only") {
        it.next();
    }
    let ident = |t: Option<Tok>| match t {
        Some(Tok::Word(w, _)) => Ok(w),
        _ => Err(CopyParseError::TableName),
    };
    let first = ident(it.next())?;
    let (schema, table) =
        if it.next_if_eq(&Tok::Punct('.')).is_some() { (Some(first), ident(it.next())?) } else { (None, first) };
    let mut columns = None;
    if it.next_if_eq(&Tok::Punct('(')).is_some() {
        let mut cols = Vec::new();
        loop {
            cols.push(ident(it.next())?);
            match it.next() {
                Some(Tok::Punct(',')) => continue,
                Some(Tok::Punct(')')) => break,
                _ => return Err(CopyParseError::ColumnList),
            }
        }
        columns = Some(cols);
    }
    if !kw(&it.next(), "to") || !kw(&it.next(), "stdout") {
        return Err(CopyParseError::NotToStdout);
    }
    let mut format = CopyFormat::Text;
    let mut header = false;
    let rest: Vec<Tok> = it.collect();
    let words: Vec<&str> = rest
        .iter()
        .filter_map(|t| match t {
            Tok::Word(w, false) => Some(w.as_str()),
            Tok::Punct(_) => None,
            _ => Some("\u{0}"),
        })
        .collect();
    let mut i = 0;
    while i < words.len() {
        match words[i] {
            "with" => {}
            "binary" => format = CopyFormat::Binary,
            "csv" => format = CopyFormat::Csv { header: false },
            "header" => {
                header = !matches!(words.get(i + 1), Some(&"false" | &"off" | &"0"));
                if matches!(words.get(i + 1), Some(&("true" | "on" | "1" | "false" | "off" | "0"))) {
                    i += 1;
                }
            }
            "format" => {
                format = match words.get(i + 1) {
                    Some(&"text") => CopyFormat::Text,
                    Some(&"csv") => CopyFormat::Csv { header: false },
                    Some(&"binary") => CopyFormat::Binary,
                    _ => return Err(CopyParseError::Format),
                };
                i += 1;
            }
            "encoding" => return Err(CopyParseError::Encoding),
            other => return Err(CopyParseError::Option(other.to_uppercase())),
        }
        i += 1;
    }
    if let CopyFormat::Csv { .. } = format {
        format = CopyFormat::Csv { header };
    }
    Ok(CopyToStdout { schema, table, columns, format })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepted_forms() {
        let c = parse_copy_to_stdout("copy customers to stdout").unwrap();
        assert_eq!((c.schema, c.table.as_str(), c.format), (None, "customers", CopyFormat::Text));
        let c = parse_copy_to_stdout("COPY public.\"Customers\" (id, \"Email\") TO STDOUT WITH (FORMAT csv, HEADER);")
            .unwrap();
        assert_eq!(c.schema.as_deref(), Some("public"));
        assert_eq!(c.table, "Customers");
        assert_eq!(c.columns, Some(vec!["id".to_string(), "Email".to_string()]));
        assert_eq!(c.format, CopyFormat::Csv { header: true });
        assert_eq!(parse_copy_to_stdout("copy t to stdout binary").unwrap().format, CopyFormat::Binary);
        assert_eq!(
            parse_copy_to_stdout("/* x */ copy t to stdout (format binary)").unwrap().format,
            CopyFormat::Binary
        );
        assert_eq!(
            parse_copy_to_stdout("copy t to stdout csv header").unwrap().format,
            CopyFormat::Csv { header: true }
        );
    }

    #[test]
    fn refused_forms() {
        for sql in [
            "copy (select email from customers) to stdout",
            "copy t to stdout with (delimiter '|')",
            "copy t to stdout; select 1",
            "copy t from stdin",
            "select 1",
            "copy t to stdout (null 'x')",
        ] {
            assert!(parse_copy_to_stdout(sql).is_err(), "{sql}");
        }
    }
}
