//! Results through masker vs direct, value for value.
//!
//! Two views of a result, both exact:
//!
//! - [`simple`]: the simple query protocol (text format), every statement of
//!   a multi-statement query with its column names, rows as
//!   `Vec<Option<String>>` and its CommandComplete row count.
//! - [`binary`]: the extended protocol with binary results, every cell as its
//!   raw bytes ([`RawCell`]) together with the column names and type OIDs, so
//!   no decoding can hide a difference.
//!
//! [`Digest`] condenses a large result (count + order-sensitive hash) while
//! streaming it.

use std::fmt;

use futures_util::{StreamExt, TryStreamExt, pin_mut};
use tokio_postgres::types::{FromSql, Kind, ToSql, Type};
use tokio_postgres::{Client, SimpleQueryMessage};

/// One statement's result in the simple protocol.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SimpleResult {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Option<String>>>,
    /// The CommandComplete row count.
    pub count: u64,
}

/// Runs `sql` (possibly several statements) with the simple protocol.
pub async fn simple(client: &Client, sql: &str) -> Result<Vec<SimpleResult>, tokio_postgres::Error> {
    let mut out = Vec::new();
    let mut current = SimpleResult::default();
    for msg in client.simple_query(sql).await? {
        match msg {
            SimpleQueryMessage::RowDescription(columns) => {
                current.columns = columns.iter().map(|c| c.name().to_owned()).collect();
            }
            SimpleQueryMessage::Row(row) => {
                current.rows.push((0..row.len()).map(|i| row.get(i).map(str::to_owned)).collect());
            }
            SimpleQueryMessage::CommandComplete(count) => {
                current.count = count;
                out.push(std::mem::take(&mut current));
            }
            _ => {}
        }
    }
    Ok(out)
}

/// A cell's bytes exactly as the server sent them (`None` for NULL).
#[derive(Clone, PartialEq, Eq)]
pub struct RawCell(pub Option<Vec<u8>>);

impl<'a> FromSql<'a> for RawCell {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(RawCell(Some(raw.to_vec())))
    }

    fn from_sql_null(_: &Type) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(RawCell(None))
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

impl fmt::Debug for RawCell {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            None => f.write_str("NULL"),
            Some(bytes) => write!(f, "{:02x?}", bytes),
        }
    }
}

/// A result in binary format: column names with type OIDs, and raw cells.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BinaryResult {
    pub columns: Vec<(String, u32)>,
    pub rows: Vec<Vec<RawCell>>,
}

/// Runs `sql` with the extended protocol (prepare, bind `params`, binary
/// results).
pub async fn binary(
    client: &Client,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<BinaryResult, tokio_postgres::Error> {
    let statement = client.prepare(sql).await?;
    let columns = statement.columns().iter().map(|c| (c.name().to_owned(), c.type_().oid())).collect();
    let rows = client
        .query(&statement, params)
        .await?
        .iter()
        .map(|row| (0..row.len()).map(|i| row.get::<_, RawCell>(i)).collect())
        .collect();
    Ok(BinaryResult { columns, rows })
}

/// Asserts `sql` gives the same simple-protocol results on both clients,
/// and returns them.
#[track_caller]
pub fn assert_same<T: PartialEq + fmt::Debug>(what: &str, direct: T, proxied: T) -> T {
    assert!(direct == proxied, "{what}: results differ\ndirect:  {direct:?}\nproxied: {proxied:?}");
    proxied
}

/// Runs `sql` on both clients with the simple protocol and asserts equality.
pub async fn assert_same_simple(direct: &Client, proxied: &Client, sql: &str) -> Vec<SimpleResult> {
    let d = simple(direct, sql).await.unwrap_or_else(|e| panic!("direct {sql:?}: {e}"));
    let p = simple(proxied, sql).await.unwrap_or_else(|e| panic!("through masker {sql:?}: {e}"));
    assert_same(sql, d, p)
}

/// Runs `sql` on both clients with the extended protocol, binary results,
/// and asserts byte equality of every cell.
pub async fn assert_same_binary(
    direct: &Client,
    proxied: &Client,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> BinaryResult {
    let d = binary(direct, sql, params).await.unwrap_or_else(|e| panic!("direct {sql:?}: {e}"));
    let p = binary(proxied, sql, params).await.unwrap_or_else(|e| panic!("through masker {sql:?}: {e}"));
    assert_same(sql, d, p)
}

/// Count and order-sensitive FNV-1a hash of a stream of cells.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Digest {
    pub rows: u64,
    pub hash: u64,
}

impl Default for Digest {
    fn default() -> Self {
        Digest { rows: 0, hash: 0xcbf2_9ce4_8422_2325 }
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} rows, hash {:016x}", self.rows, self.hash)
    }
}

impl Digest {
    /// Feeds one cell (NULL distinct from every byte string).
    pub fn cell(&mut self, cell: Option<&[u8]>) {
        match cell {
            None => self.bytes(&[0xff, 0xff, 0xff, 0xff]),
            Some(bytes) => {
                self.bytes(&(bytes.len() as u32).to_be_bytes());
                self.bytes(bytes);
            }
        }
    }

    /// Ends a row.
    pub fn end_row(&mut self) {
        self.rows += 1;
        self.bytes(b"\n");
    }

    fn bytes(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.hash ^= u64::from(b);
            self.hash = self.hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

/// Streams `sql` with the simple protocol (text) into a [`Digest`].
pub async fn digest_simple(client: &Client, sql: &str) -> Result<Digest, tokio_postgres::Error> {
    let stream = client.simple_query_raw(sql).await?;
    pin_mut!(stream);
    let mut digest = Digest::default();
    while let Some(msg) = stream.try_next().await? {
        if let SimpleQueryMessage::Row(row) = msg {
            for i in 0..row.len() {
                digest.cell(row.get(i).map(str::as_bytes));
            }
            digest.end_row();
        }
    }
    Ok(digest)
}

/// Streams `sql` with the extended protocol (binary) into a [`Digest`].
pub async fn digest_binary(client: &Client, sql: &str) -> Result<Digest, tokio_postgres::Error> {
    let params: [&(dyn ToSql + Sync); 0] = [];
    let stream = client.query_raw(sql, params).await?;
    pin_mut!(stream);
    let mut digest = Digest::default();
    while let Some(row) = stream.next().await {
        let row = row?;
        for i in 0..row.len() {
            digest.cell(row.get::<_, RawCell>(i).0.as_deref());
        }
        digest.end_row();
    }
    Ok(digest)
}

/// Runs `sql` with binary results and decodes every cell by its column type
/// into PostgreSQL's text rendering (ISO dates, `TimeZone = UTC`), failing on
/// any cell that is not valid binary for its type. This checks what text
/// comparison cannot: that a (masked) value is well-formed in binary format.
pub async fn typed(
    client: &Client,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<Vec<Option<String>>>, anyhow::Error> {
    let statement = client.prepare(sql).await?;
    let rows = client.query(&statement, params).await?;
    let mut out = Vec::with_capacity(rows.len());
    for row in &rows {
        let mut cells = Vec::with_capacity(row.len());
        for (i, column) in statement.columns().iter().enumerate() {
            let cell = row.get::<_, RawCell>(i).0;
            let text = match cell {
                None => None,
                Some(raw) => Some(
                    decode_binary(column.type_(), &raw)
                        .map_err(|e| anyhow::anyhow!("column {} ({}): {e}", column.name(), column.type_()))?,
                ),
            };
            cells.push(text);
        }
        out.push(cells);
    }
    Ok(out)
}

type DecodeError = Box<dyn std::error::Error + Sync + Send>;

/// Decodes one binary-format value of type `ty` into its text rendering.
/// Supports the types of the fixture (and arrays of them).
pub fn decode_binary(ty: &Type, raw: &[u8]) -> Result<String, DecodeError> {
    use postgres_protocol::types as t;
    let exact = |len: usize| -> Result<(), DecodeError> {
        if raw.len() == len { Ok(()) } else { Err(format!("{} bytes, expected {len}", raw.len()).into()) }
    };
    Ok(match *ty {
        Type::BOOL => (if t::bool_from_sql(raw)? { "t" } else { "f" }).to_owned(),
        Type::INT2 => t::int2_from_sql(raw)?.to_string(),
        Type::INT4 => t::int4_from_sql(raw)?.to_string(),
        Type::INT8 => t::int8_from_sql(raw)?.to_string(),
        Type::OID => t::oid_from_sql(raw)?.to_string(),
        Type::FLOAT4 => t::float4_from_sql(raw)?.to_string(),
        Type::FLOAT8 => t::float8_from_sql(raw)?.to_string(),
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN | Type::JSON => {
            t::text_from_sql(raw)?.to_owned()
        }
        Type::JSONB => match raw.split_first() {
            Some((1, text)) => std::str::from_utf8(text)?.to_owned(),
            _ => return Err("jsonb without version byte 1".into()),
        },
        Type::BYTEA => {
            let mut s = String::from("\\x");
            for b in t::bytea_from_sql(raw) {
                s.push_str(&format!("{b:02x}"));
            }
            s
        }
        Type::UUID => {
            exact(16)?;
            let hex: String = t::uuid_from_sql(raw)?.iter().map(|b| format!("{b:02x}")).collect();
            format!("{}-{}-{}-{}-{}", &hex[..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..])
        }
        Type::DATE => {
            exact(4)?;
            match t::date_from_sql(raw)? {
                i32::MAX => "infinity".to_owned(),
                i32::MIN => "-infinity".to_owned(),
                days => civil_date(i64::from(days)),
            }
        }
        Type::TIMESTAMP | Type::TIMESTAMPTZ => {
            exact(8)?;
            let suffix = if *ty == Type::TIMESTAMPTZ { "+00" } else { "" };
            match t::timestamp_from_sql(raw)? {
                i64::MAX => "infinity".to_owned(),
                i64::MIN => "-infinity".to_owned(),
                micros => {
                    let (days, of_day) = (micros.div_euclid(86_400_000_000), micros.rem_euclid(86_400_000_000));
                    let (secs, frac) = (of_day / 1_000_000, of_day % 1_000_000);
                    let mut s =
                        format!("{} {:02}:{:02}:{:02}", civil_date(days), secs / 3600, secs / 60 % 60, secs % 60);
                    if frac != 0 {
                        s.push_str(format!(".{frac:06}").trim_end_matches('0'));
                    }
                    s + suffix
                }
            }
        }
        Type::INET | Type::CIDR => {
            let inet = t::inet_from_sql(raw)?;
            let full = if inet.addr().is_ipv4() { 32 } else { 128 };
            if inet.netmask() == full && *ty == Type::INET {
                inet.addr().to_string()
            } else {
                format!("{}/{}", inet.addr(), inet.netmask())
            }
        }
        Type::NUMERIC => decode_numeric(raw)?,
        Type::TIME => {
            exact(8)?;
            time_of_day(i64::from_be_bytes(raw.try_into()?))
        }
        Type::INTERVAL => {
            exact(16)?;
            let micros = i64::from_be_bytes(raw[..8].try_into()?);
            let days = i32::from_be_bytes(raw[8..12].try_into()?);
            let months = i32::from_be_bytes(raw[12..].try_into()?);
            format!("{months} mons {days} days {micros} microseconds")
        }
        Type::CHAR => {
            exact(1)?;
            char::from(raw[0]).to_string()
        }
        Type::MONEY => {
            exact(8)?;
            let cents = i64::from_be_bytes(raw.try_into()?);
            format!("{}.{:02}", cents / 100, (cents % 100).abs())
        }
        Type::XML => std::str::from_utf8(raw)?.to_owned(),
        Type::REGCLASS | Type::REGTYPE | Type::REGPROC | Type::XID | Type::CID => t::oid_from_sql(raw)?.to_string(),
        Type::RECORD => decode_record(None, raw)?,
        _ => match ty.kind() {
            Kind::Array(element) => decode_array(element, raw)?,
            Kind::Domain(inner) => decode_binary(inner, raw)?,
            Kind::Enum(_) => std::str::from_utf8(raw)?.to_owned(),
            Kind::Composite(fields) => decode_record(Some(fields), raw)?,
            _ => return Err(format!("no binary decoder for type {ty}").into()),
        },
    })
}

/// `HH:MM:SS[.ffffff]` for microseconds since midnight.
fn time_of_day(micros: i64) -> String {
    let (secs, frac) = (micros / 1_000_000, micros % 1_000_000);
    let mut s = format!("{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60);
    if frac != 0 {
        s.push_str(format!(".{frac:06}").trim_end_matches('0'));
    }
    s
}

/// A row value (`record` or a named composite type) in binary: a field
/// count, then per field its type OID, length and bytes. Rendered as
/// PostgreSQL writes it in text: `(a,"b c",)`.
fn decode_record(fields: Option<&[tokio_postgres::types::Field]>, raw: &[u8]) -> Result<String, DecodeError> {
    let int = |at: usize| -> Result<i32, DecodeError> {
        raw.get(at..at + 4).map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]])).ok_or_else(|| "short record".into())
    };
    let count = int(0)?;
    if count < 0 {
        return Err("negative record field count".into());
    }
    let mut at = 4;
    let mut out = String::from("(");
    for i in 0..count as usize {
        let oid = int(at)? as u32;
        let len = int(at + 4)?;
        at += 8;
        if i > 0 {
            out.push(',');
        }
        if len < 0 {
            continue;
        }
        let bytes = raw.get(at..at + len as usize).ok_or("short record field")?;
        at += len as usize;
        let ty = match fields.and_then(|f| f.get(i)) {
            Some(field) => field.type_().clone(),
            None => Type::from_oid(oid).ok_or_else(|| format!("record field of unknown type OID {oid}"))?,
        };
        let text = decode_binary(&ty, bytes)?;
        let needs =
            text.is_empty() || text.chars().any(|c| matches!(c, '(' | ')' | ',' | '"' | '\\') || c.is_whitespace());
        if needs {
            out.push('"');
            for c in text.chars() {
                if c == '"' || c == '\\' {
                    out.push(c);
                }
                out.push(c);
            }
            out.push('"');
        } else {
            out.push_str(&text);
        }
    }
    if at != raw.len() {
        return Err(format!("{} bytes after the last record field", raw.len() - at).into());
    }
    out.push(')');
    Ok(out)
}

/// `YYYY-MM-DD` for a day count relative to 2000-01-01.
fn civil_date(days_since_2000: i64) -> String {
    // Howard Hinnant's civil_from_days, shifted from 1970 to 2000.
    let z = days_since_2000 + 10_957 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

fn decode_numeric(raw: &[u8]) -> Result<String, DecodeError> {
    let field = |i: usize| -> Result<i16, DecodeError> {
        raw.get(i * 2..i * 2 + 2).map(|b| i16::from_be_bytes([b[0], b[1]])).ok_or_else(|| "short numeric".into())
    };
    let (ndigits, weight, sign, dscale) = (field(0)?, field(1)?, field(2)? as u16, field(3)?);
    if ndigits < 0 || raw.len() != 8 + 2 * ndigits as usize || dscale < 0 {
        return Err(format!("malformed numeric header ({} bytes, {ndigits} digits)", raw.len()).into());
    }
    match sign {
        0xC000 => return Ok("NaN".into()),
        0xD000 => return Ok("Infinity".into()),
        0xF000 => return Ok("-Infinity".into()),
        0x0000 | 0x4000 => {}
        other => return Err(format!("numeric sign {other:#06x}").into()),
    }
    let digits: Vec<i16> = (0..ndigits as usize).map(|i| field(4 + i)).collect::<Result<_, _>>()?;
    if digits.iter().any(|&d| !(0..10_000).contains(&d)) {
        return Err("numeric digit out of range".into());
    }
    let digit = |i: i64| if i >= 0 && (i as usize) < digits.len() { digits[i as usize] } else { 0 };
    let mut s = String::new();
    if sign == 0x4000 {
        s.push('-');
    }
    if weight < 0 {
        s.push('0');
    } else {
        s.push_str(&digit(0).to_string());
        for i in 1..=i64::from(weight) {
            s.push_str(&format!("{:04}", digit(i)));
        }
    }
    if dscale > 0 {
        let mut frac = String::new();
        let mut i = i64::from(weight) + 1;
        while frac.len() < dscale as usize {
            frac.push_str(&format!("{:04}", digit(i)));
            i += 1;
        }
        frac.truncate(dscale as usize);
        s.push('.');
        s.push_str(&frac);
    }
    Ok(s)
}

fn decode_array(element: &Type, raw: &[u8]) -> Result<String, DecodeError> {
    use fallible_iterator::FallibleIterator as _;
    use postgres_protocol::types as t;
    let array = t::array_from_sql(raw)?;
    if array.element_type() != element.oid() {
        return Err(format!("array of OID {} where {element} was expected", array.element_type()).into());
    }
    let dims: Vec<usize> = array.dimensions().map(|d| Ok(d.len as usize)).collect()?;
    let values: Vec<Option<String>> =
        array.values().map(|v| v.map(|raw| decode_binary(element, raw)).transpose()).collect()?;
    if dims.is_empty() {
        return Ok("{}".into());
    }
    if values.len() != dims.iter().product::<usize>() {
        return Err("array element count does not match its dimensions".into());
    }
    fn render(dims: &[usize], values: &mut std::slice::Iter<'_, Option<String>>, out: &mut String) {
        out.push('{');
        for i in 0..dims[0] {
            if i > 0 {
                out.push(',');
            }
            if dims.len() > 1 {
                render(&dims[1..], values, out);
            } else {
                match values.next().expect("counted") {
                    None => out.push_str("NULL"),
                    Some(v) => out.push_str(&quote_array_element(v)),
                }
            }
        }
        out.push('}');
    }
    let mut out = String::new();
    render(&dims, &mut values.iter(), &mut out);
    Ok(out)
}

fn quote_array_element(v: &str) -> String {
    let needs = v.is_empty()
        || v.eq_ignore_ascii_case("NULL")
        || v.chars().any(|c| matches!(c, '{' | '}' | ',' | '"' | '\\') || c.is_ascii_whitespace());
    if !needs {
        return v.to_owned();
    }
    let mut s = String::from("\"");
    for c in v.chars() {
        if c == '"' || c == '\\' {
            s.push('\\');
        }
        s.push(c);
    }
    s.push('"');
    s
}
