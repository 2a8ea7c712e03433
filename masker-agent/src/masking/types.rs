//! Which codec a column's type OID selects.
//!
//! Only built-in types with a fixed OID are known here. Domains need no entry:
//! PostgreSQL reports a domain column with its base type in RowDescription.
//! Types whose wire form is plain text in both formats (enums, `citext`)
//! are not known here: their columns get the actions that need no decoding.

use crate::wire::TypeOid;

/// The value types the engine can decode and re-encode in both formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scalar {
    /// text, varchar, name, unknown: the value is its UTF-8 text in both formats.
    Text,
    /// bpchar: text, blank-padded.
    Bpchar,
    Int2,
    Int4,
    Int8,
    Numeric,
    Float4,
    Float8,
    Bool,
    Date,
    Time,
    Timestamp,
    Timestamptz,
    Interval,
    Inet,
    Cidr,
    Uuid,
    Json,
    Jsonb,
    Bytea,
}

impl Scalar {
    /// Whether the value's text is what an action on characters applies to.
    pub(crate) fn is_text(self) -> bool {
        matches!(self, Scalar::Text | Scalar::Bpchar)
    }
}

/// A column type as the engine sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PgType {
    Scalar(Scalar),
    /// An array whose elements are of the scalar type (any number of dimensions).
    Array(Scalar),
    /// A type the engine cannot interpret: any masking action yields NULL.
    Unknown,
}

pub(crate) fn classify(oid: TypeOid) -> PgType {
    use Scalar::*;
    let (scalar, array) = match oid.0 {
        25 | 1043 | 19 | 705 => (Text, false),
        1009 | 1015 | 1003 => (Text, true),
        1042 => (Bpchar, false),
        1014 => (Bpchar, true),
        21 => (Int2, false),
        1005 => (Int2, true),
        23 => (Int4, false),
        1007 => (Int4, true),
        20 => (Int8, false),
        1016 => (Int8, true),
        1700 => (Numeric, false),
        1231 => (Numeric, true),
        700 => (Float4, false),
        1021 => (Float4, true),
        701 => (Float8, false),
        1022 => (Float8, true),
        16 => (Bool, false),
        1000 => (Bool, true),
        1082 => (Date, false),
        1182 => (Date, true),
        1083 => (Time, false),
        1183 => (Time, true),
        1114 => (Timestamp, false),
        1115 => (Timestamp, true),
        1184 => (Timestamptz, false),
        1185 => (Timestamptz, true),
        1186 => (Interval, false),
        1187 => (Interval, true),
        869 => (Inet, false),
        1041 => (Inet, true),
        650 => (Cidr, false),
        651 => (Cidr, true),
        2950 => (Uuid, false),
        2951 => (Uuid, true),
        114 => (Json, false),
        199 => (Json, true),
        3802 => (Jsonb, false),
        3807 => (Jsonb, true),
        17 => (Bytea, false),
        1001 => (Bytea, true),
        _ => return PgType::Unknown,
    };
    if array { PgType::Array(scalar) } else { PgType::Scalar(scalar) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_and_unknown_oids() {
        assert_eq!(classify(TypeOid(25)), PgType::Scalar(Scalar::Text));
        assert_eq!(classify(TypeOid(1007)), PgType::Array(Scalar::Int4));
        assert_eq!(classify(TypeOid(3807)), PgType::Array(Scalar::Jsonb));
        assert_eq!(classify(TypeOid(600)), PgType::Unknown); // point
    }
}
