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
use tokio_postgres::types::{FromSql, ToSql, Type};
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
