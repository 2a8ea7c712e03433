//! Action × type × format tests of the whole engine through DataRow and COPY.

use bytes::{BufMut, BytesMut};
use postgres_protocol::types as pt;

use super::cell::REDACTED;
use super::row::mask_data_row;
use super::*;
use crate::wire::{Format, TypeOid};

fn keys() -> Keys {
    Keys::new(b"unit-test-key-0123456789").unwrap()
}

/// Masks one cell through a whole DataRow; `None` is SQL NULL.
fn mask1(action: &ColumnAction, oid: u32, fmt: Format, v: &[u8]) -> Option<Vec<u8>> {
    mask1_with(action, oid, fmt, v, &keys())
}

fn mask1_with(action: &ColumnAction, oid: u32, fmt: Format, v: &[u8], keys: &Keys) -> Option<Vec<u8>> {
    let plan = RowPlan::new(vec![(action.clone(), TypeOid(oid), fmt)], keys);
    let mut body = BytesMut::new();
    body.put_i16(1);
    body.put_i32(v.len() as i32);
    body.extend_from_slice(v);
    let mut out = BytesMut::new();
    mask_data_row(&plan, &body, &mut out).unwrap();
    assert_eq!(out[0], b'D');
    assert_eq!(u32::from_be_bytes([out[1], out[2], out[3], out[4]]) as usize, out.len() - 1);
    let (_, mut cells) = crate::wire::data_row_cells(&out[5..]).unwrap();
    let cell = cells.next().unwrap().unwrap().map(<[u8]>::to_vec);
    assert!(cells.finished());
    cell
}

fn text(action: &ColumnAction, oid: u32, v: &str) -> Option<String> {
    mask1(action, oid, Format::Text, v.as_bytes()).map(|b| String::from_utf8(b).unwrap())
}

fn bin(f: impl FnOnce(&mut BytesMut)) -> Vec<u8> {
    let mut b = BytesMut::new();
    f(&mut b);
    b.to_vec()
}

const TEXT: u32 = 25;
const VARCHAR: u32 = 1043;
const BPCHAR: u32 = 1042;
const NAME: u32 = 19;
const INT2: u32 = 21;
const INT4: u32 = 23;
const INT8: u32 = 20;
const NUMERIC: u32 = 1700;
const FLOAT4: u32 = 700;
const FLOAT8: u32 = 701;
const BOOL: u32 = 16;
const DATE: u32 = 1082;
const TIME: u32 = 1083;
const TIMESTAMP: u32 = 1114;
const TIMESTAMPTZ: u32 = 1184;
const INTERVAL: u32 = 1186;
const INET: u32 = 869;
const CIDR: u32 = 650;
const UUID: u32 = 2950;
const JSON: u32 = 114;
const JSONB: u32 = 3802;
const BYTEA: u32 = 17;

/// One sample per type: (oid, text form, binary form).
fn samples() -> Vec<(u32, &'static str, Vec<u8>)> {
    let ip: std::net::IpAddr = "192.168.1.77".parse().unwrap();
    let mut numeric = BytesMut::new();
    codec::numeric_text_to_bin(b"12345.678", &mut numeric);
    vec![
        (TEXT, "alice@example.com", b"alice@example.com".to_vec()),
        (VARCHAR, "Alice Smith", b"Alice Smith".to_vec()),
        (BPCHAR, "AB12      ", b"AB12      ".to_vec()),
        (NAME, "alice", b"alice".to_vec()),
        (INT2, "1234", bin(|b| pt::int2_to_sql(1234, b))),
        (INT4, "5551234", bin(|b| pt::int4_to_sql(5_551_234, b))),
        (INT8, "4111111111111111", bin(|b| pt::int8_to_sql(4_111_111_111_111_111, b))),
        (NUMERIC, "12345.678", numeric.to_vec()),
        (FLOAT4, "1234.5", bin(|b| pt::float4_to_sql(1234.5, b))),
        (FLOAT8, "98765.25", bin(|b| pt::float8_to_sql(98765.25, b))),
        (BOOL, "t", bin(|b| pt::bool_to_sql(true, b))),
        (DATE, "1985-07-23", bin(|b| pt::date_to_sql(codec::pg_days(1985, 7, 23) as i32, b))),
        (TIME, "13:45:12.5", bin(|b| pt::time_to_sql(49_512_500_000, b))),
        (TIMESTAMP, "2024-03-05 13:45:12", bin(|b| pt::timestamp_to_sql(ts(2024, 3, 5, 49_512_000_000), b))),
        (TIMESTAMPTZ, "2024-03-05 13:45:12+01", bin(|b| pt::timestamp_to_sql(ts(2024, 3, 5, 45_912_000_000), b))),
        (
            INTERVAL,
            "1 day 02:00:00",
            bin(|b| {
                b.put_i64(7_200_000_000);
                b.put_i32(1);
                b.put_i32(0);
            }),
        ),
        (INET, "192.168.1.77", bin(|b| pt::inet_to_sql(ip, 32, b))),
        (CIDR, "192.168.1.0/24", {
            let mut v = bin(|b| pt::inet_to_sql("192.168.1.0".parse().unwrap(), 24, b));
            v[2] = 1;
            v
        }),
        (
            UUID,
            "7d444840-9dc0-11d1-b245-5ffdce74fad2",
            codec::parse_uuid_text(b"7d444840-9dc0-11d1-b245-5ffdce74fad2").unwrap().to_vec(),
        ),
        (JSON, r#"{"email": "alice@example.com", "n": 1}"#, br#"{"email": "alice@example.com", "n": 1}"#.to_vec()),
        (JSONB, r#"{"email": "alice@example.com", "n": 1}"#, {
            let mut v = vec![1];
            v.extend_from_slice(br#"{"email": "alice@example.com", "n": 1}"#);
            v
        }),
        (BYTEA, "\\x616c696365406578616d706c652e636f6d", b"alice@example.com".to_vec()),
    ]
}

fn ts(y: i64, m: u32, d: u32, us: i64) -> i64 {
    codec::pg_days(y, m, d) * codec::USECS_PER_DAY + us
}

/// Whether `v` is a valid value of `oid` in `fmt` (binary via the decoders
/// of postgres-protocol, which tokio-postgres uses).
fn valid(oid: u32, fmt: Format, v: &[u8]) -> bool {
    let s = std::str::from_utf8(v);
    match fmt {
        Format::Binary => match oid {
            TEXT | VARCHAR | BPCHAR | NAME | JSON => pt::text_from_sql(v).is_ok(),
            JSONB => v.first() == Some(&1) && std::str::from_utf8(&v[1..]).is_ok(),
            INT2 => pt::int2_from_sql(v).is_ok(),
            INT4 => pt::int4_from_sql(v).is_ok(),
            INT8 => pt::int8_from_sql(v).is_ok(),
            FLOAT4 => pt::float4_from_sql(v).is_ok(),
            FLOAT8 => pt::float8_from_sql(v).is_ok(),
            BOOL => pt::bool_from_sql(v).is_ok(),
            DATE => pt::date_from_sql(v).is_ok(),
            TIME => pt::time_from_sql(v).is_ok_and(|t| (0..=codec::USECS_PER_DAY).contains(&t)),
            TIMESTAMP | TIMESTAMPTZ => pt::timestamp_from_sql(v).is_ok(),
            INTERVAL => v.len() == 16,
            INET | CIDR => pt::inet_from_sql(v).is_ok_and(|i| {
                let host_bits_clear = match i.addr() {
                    std::net::IpAddr::V4(a) => u32::from(a).checked_shl(u32::from(i.netmask())).unwrap_or(0) == 0,
                    std::net::IpAddr::V6(a) => u128::from(a).checked_shl(u32::from(i.netmask())).unwrap_or(0) == 0,
                };
                oid == INET || host_bits_clear
            }),
            UUID => pt::uuid_from_sql(v).is_ok(),
            BYTEA => true,
            NUMERIC => valid_numeric_binary(v),
            _ => false,
        },
        Format::Text => {
            let Ok(s) = s else { return false };
            match oid {
                TEXT | VARCHAR | BPCHAR | NAME => true,
                JSON | JSONB => serde_json::from_str::<serde_json::Value>(s).is_ok(),
                INT2 => s.parse::<i16>().is_ok(),
                INT4 => s.parse::<i32>().is_ok(),
                INT8 => s.parse::<i64>().is_ok(),
                NUMERIC => codec::parse_decimal(v).is_some(),
                FLOAT4 | FLOAT8 => s.parse::<f64>().is_ok(),
                BOOL => s == "t" || s == "f",
                DATE => codec::parse_date(v).is_some(),
                TIME => codec::parse_time(v).is_some_and(|(_, rest)| rest.is_empty()),
                TIMESTAMP => codec::parse_timestamp(v).is_some_and(|t| t.tz.is_empty()),
                TIMESTAMPTZ => codec::parse_timestamp(v).is_some_and(|t| !t.tz.is_empty()),
                INTERVAL => !s.is_empty(),
                INET => codec::parse_net_text(v).is_some(),
                CIDR => codec::parse_net_text(v).is_some_and(|n| n.truncate(n.bits) == n && s.contains('/')),
                UUID => codec::parse_uuid_text(v).is_some() && s.len() == 36,
                BYTEA => s.starts_with("\\x") && s.len() % 2 == 0,
                _ => false,
            }
        }
    }
}

fn valid_numeric_binary(v: &[u8]) -> bool {
    if v.len() < 8 {
        return false;
    }
    let nd = u16::from_be_bytes([v[0], v[1]]) as usize;
    let sign = u16::from_be_bytes([v[4], v[5]]);
    v.len() == 8 + 2 * nd
        && matches!(sign, 0 | 0x4000 | 0xC000 | 0xD000 | 0xF000)
        && v[8..].chunks(2).all(|d| u16::from_be_bytes([d[0], d[1]]) < 10_000)
        && (nd == 0 || u16::from_be_bytes([v[8], v[9]]) != 0)
        && codec::numeric_bin_to_text(v).is_some()
}

fn all_actions() -> Vec<ColumnAction> {
    vec![
        ColumnAction::Allow,
        ColumnAction::Redact,
        ColumnAction::Null,
        ColumnAction::Partial { first: 1, last: 2 },
        ColumnAction::Email,
        ColumnAction::Pseudonymize { format_preserving: false },
        ColumnAction::Pseudonymize { format_preserving: true },
        ColumnAction::Generalize(Generalize::Year),
        ColumnAction::Generalize(Generalize::Month),
        ColumnAction::Generalize(Generalize::Day),
        ColumnAction::Generalize(Generalize::Hour),
        ColumnAction::Generalize(Generalize::Network { v4: 24, v6: 64 }),
        ColumnAction::Generalize(Generalize::Bucket(1000)),
        ColumnAction::Detect,
    ]
}

/// Whether `action` gives a non-NULL input of type `oid` a value; where it
/// does not apply to the type, the cell becomes NULL (fail closed).
fn yields_value(action: &ColumnAction, oid: u32) -> bool {
    let text = [TEXT, VARCHAR, BPCHAR, NAME].contains(&oid);
    let datetime = [DATE, TIME, TIMESTAMP, TIMESTAMPTZ].contains(&oid);
    let number = [INT2, INT4, INT8, NUMERIC, FLOAT4, FLOAT8].contains(&oid);
    match action {
        ColumnAction::Allow | ColumnAction::Redact => true,
        ColumnAction::Null => false,
        ColumnAction::Detect => oid != BYTEA,
        ColumnAction::Email | ColumnAction::Partial { .. } | ColumnAction::Definition(_) => text,
        ColumnAction::Pseudonymize { .. } => ![BOOL, FLOAT4, FLOAT8, INTERVAL].contains(&oid),
        ColumnAction::Generalize(Generalize::Network { .. }) => oid == INET || oid == CIDR,
        ColumnAction::Generalize(Generalize::Bucket(_)) => number,
        ColumnAction::Generalize(_) => datetime,
    }
}

#[test]
fn every_action_on_every_type_is_type_valid_in_both_formats() {
    let mut checked = 0;
    for (oid, t, b) in samples() {
        for action in all_actions() {
            for (fmt, input) in [(Format::Text, t.as_bytes()), (Format::Binary, &b[..])] {
                match (mask1(&action, oid, fmt, input), yields_value(&action, oid)) {
                    (Some(out), true) => {
                        assert!(
                            valid(oid, fmt, &out),
                            "{action:?} on oid {oid} {fmt:?}: {:?}",
                            String::from_utf8_lossy(&out)
                        );
                        checked += 1;
                    }
                    (None, false) => {}
                    (got, _) => panic!("{action:?} on oid {oid} {fmt:?}: unexpected {got:?}"),
                }
            }
        }
    }
    assert!(checked > 150, "only {checked} masked values were checked");
}

#[test]
fn arrays_every_action_both_formats() {
    // int4[] and text[] with a NULL element, binary built by postgres-protocol.
    let mut ints = BytesMut::new();
    pt::array_to_sql(
        [pt::ArrayDimension { len: 3, lower_bound: 1 }],
        23,
        [Some(4_111_111), None, Some(42)],
        |v: Option<i32>, buf| match v {
            Some(v) => {
                pt::int4_to_sql(v, buf);
                Ok(postgres_protocol::IsNull::No)
            }
            None => Ok(postgres_protocol::IsNull::Yes),
        },
        &mut ints,
    )
    .unwrap();
    let mut texts = BytesMut::new();
    pt::array_to_sql(
        [pt::ArrayDimension { len: 2, lower_bound: 1 }],
        25,
        ["alice@example.com", "call 555-123-4567"],
        |v: &str, buf| {
            pt::text_to_sql(v, buf);
            Ok(postgres_protocol::IsNull::No)
        },
        &mut texts,
    )
    .unwrap();
    for action in all_actions() {
        for (oid, elem, bin_in, text_in) in [
            (1007u32, 23u32, &ints, "{4111111,NULL,42}"),
            (1009, 25, &texts, r#"{alice@example.com,"call 555-123-4567"}"#),
        ] {
            // An array keeps its shape (elements the action cannot mask
            // become NULL); only the `null` action empties the cell.
            let masked = mask1(&action, oid, Format::Binary, bin_in);
            assert_eq!(masked.is_some(), action != ColumnAction::Null, "{action:?} {oid} binary: {masked:?}");
            if let Some(out) = masked {
                let arr = pt::array_from_sql(&out).unwrap();
                assert_eq!(arr.element_type(), elem);
                use fallible_iterator::FallibleIterator;
                let values: Vec<Option<&[u8]>> = arr.values().collect().unwrap();
                for v in values.into_iter().flatten() {
                    assert!(valid(elem, Format::Binary, v), "{action:?} {oid}");
                }
                // has-null flag consistent with the elements
                let has_null = i32::from_be_bytes([out[4], out[5], out[6], out[7]]);
                let nulls = pt::array_from_sql(&out).unwrap().values().filter(|v| Ok(v.is_none())).count().unwrap();
                assert_eq!(has_null != 0, nulls > 0, "{action:?} {oid}");
            }
            let masked = mask1(&action, oid, Format::Text, text_in.as_bytes());
            assert_eq!(masked.is_some(), action != ColumnAction::Null, "{action:?} {oid} text: {masked:?}");
            if let Some(out) = masked {
                let s = String::from_utf8(out).unwrap();
                assert!(s.starts_with('{') && s.ends_with('}'), "{action:?}: {s}");
            }
        }
    }
    assert_eq!(
        text(&ColumnAction::Email, 1009, r#"{alice@example.com,"b\"c",NULL}"#).unwrap(),
        r#"{"****@example.com","****",NULL}"#
    );
    assert_eq!(
        text(&ColumnAction::Detect, 1009, r#"{"call 555-123-4567",plain}"#).unwrap(),
        r#"{"call ***-***-****",plain}"#
    );
    assert_eq!(text(&ColumnAction::Redact, 1007, "{{1,2},{3,NULL}}").unwrap(), r#"{{"0","0"},{"0",NULL}}"#);
    assert_eq!(text(&ColumnAction::Redact, 1009, r#"{"a""b"}"#), None, "malformed array: NULL");
}

#[test]
fn redact_values() {
    let r = ColumnAction::Redact;
    assert_eq!(text(&r, TEXT, "alice").unwrap(), REDACTED);
    assert_eq!(text(&r, INT4, "42").unwrap(), "0");
    assert_eq!(text(&r, DATE, "1985-07-23").unwrap(), "1970-01-01");
    assert_eq!(text(&r, TIMESTAMPTZ, "2024-03-05 13:45:12+01").unwrap(), "1970-01-01 00:00:00+00");
    assert_eq!(text(&r, INET, "10.1.2.3").unwrap(), "0.0.0.0");
    assert_eq!(text(&r, UUID, "7d444840-9dc0-11d1-b245-5ffdce74fad2").unwrap(), "00000000-0000-0000-0000-000000000000");
    assert_eq!(text(&r, JSON, "{}").unwrap(), "\"REDACTED\"");
    let d = mask1(&r, DATE, Format::Binary, &bin(|b| pt::date_to_sql(5000, b))).unwrap();
    assert_eq!(pt::date_from_sql(&d).unwrap(), -10_957);
    assert_eq!(mask1(&r, 600, Format::Text, b"(1,2)"), None); // point: unknown type
    assert_eq!(mask1(&ColumnAction::Allow, 600, Format::Text, b"(1,2)").unwrap(), b"(1,2)");
}

#[test]
fn partial_and_email() {
    let p = ColumnAction::Partial { first: 1, last: 4 };
    assert_eq!(text(&p, TEXT, "4111111111111111").unwrap(), "4***********1111");
    assert_eq!(text(&p, TEXT, "abc").unwrap(), "***");
    assert_eq!(text(&p, TEXT, "Zoë Ångström").unwrap(), "Z*******tröm");
    assert_eq!(text(&p, BPCHAR, "AB1234    ").unwrap(), "A*1234    ");
    assert_eq!(text(&p, INT4, "1234"), None);
    assert_eq!(text(&ColumnAction::Email, TEXT, "alice@example.com").unwrap(), "****@example.com");
    assert_eq!(text(&ColumnAction::Email, TEXT, "not an email").unwrap(), "****");
}

#[test]
fn pseudonymize_is_deterministic_keyed_and_format_aware() {
    let ps = ColumnAction::Pseudonymize { format_preserving: false };
    let fp = ColumnAction::Pseudonymize { format_preserving: true };
    let a = text(&ps, TEXT, "alice@example.com").unwrap();
    assert!(a.starts_with("psd_") && a.len() == 20, "{a}");
    assert_eq!(a, text(&ps, VARCHAR, "alice@example.com").unwrap());
    assert_ne!(a, text(&ps, TEXT, "bob@example.com").unwrap());
    let other = Keys::new(b"a-different-key-entirely").unwrap();
    let b = mask1_with(&ps, TEXT, Format::Text, b"alice@example.com", &other).unwrap();
    assert_ne!(a.as_bytes(), &b[..]);
    // No key: fail closed.
    assert_eq!(mask1_with(&ps, TEXT, Format::Text, b"alice", &Keys::none()), None);

    let e = text(&fp, TEXT, "alice@example.com").unwrap();
    let (local, domain) = e.split_once('@').unwrap();
    assert_eq!(local.len(), 5);
    assert!(local.bytes().all(|b| b.is_ascii_lowercase()) && domain.ends_with(".invalid"), "{e}");
    assert!(detect::contains_pii(e.as_bytes()), "still an email: {e}");
    assert_eq!(domain, text(&fp, TEXT, "bob@example.com").unwrap().split_once('@').unwrap().1);
    let phone = text(&fp, TEXT, "+1 (555) 123-4567").unwrap();
    assert_eq!(phone.len(), 17);
    assert!(phone.starts_with("+") && phone.chars().filter(char::is_ascii_digit).count() == 11, "{phone}");
    assert_ne!(phone, "+1 (555) 123-4567");

    // Same value, text vs binary, int4 vs int8 vs numeric: same pseudonym.
    let t = text(&ps, INT8, "5551234").unwrap();
    let b8 = mask1(&ps, INT8, Format::Binary, &bin(|b| pt::int8_to_sql(5_551_234, b))).unwrap();
    assert_eq!(t.parse::<i64>().unwrap(), pt::int8_from_sql(&b8).unwrap());
    assert_eq!(text(&ps, NUMERIC, "5551234.00").unwrap(), t);
    let fp4 = text(&fp, INT4, "5551234").unwrap();
    assert_eq!(fp4.len(), 7);
    assert_eq!(fp4, text(&fp, INT8, "5551234").unwrap());
    let u = text(&ps, UUID, "7d444840-9dc0-11d1-b245-5ffdce74fad2").unwrap();
    let ub =
        mask1(&ps, UUID, Format::Binary, &codec::parse_uuid_text(b"7d444840-9dc0-11d1-b245-5ffdce74fad2").unwrap())
            .unwrap();
    assert_eq!(codec::parse_uuid_text(u.as_bytes()).unwrap().to_vec(), ub);
    assert_eq!(&u[14..15], "4");
    let tz_text = text(&ps, TIMESTAMPTZ, "2024-03-05 13:45:12+01").unwrap();
    let tz_bin =
        mask1(&ps, TIMESTAMPTZ, Format::Binary, &bin(|b| pt::timestamp_to_sql(ts(2024, 3, 5, 45_912_000_000), b)))
            .unwrap();
    let parsed = codec::parse_timestamp(tz_text.as_bytes()).unwrap();
    assert_eq!(parsed.days * codec::USECS_PER_DAY + parsed.usecs, pt::timestamp_from_sql(&tz_bin).unwrap());
    assert_eq!(text(&ps, BOOL, "t"), None);
}

#[test]
fn generalize_values() {
    use Generalize::*;
    let g = |k| ColumnAction::Generalize(k);
    assert_eq!(text(&g(Month), DATE, "1985-07-23").unwrap(), "1985-07-01");
    assert_eq!(text(&g(Year), DATE, "1985-07-23").unwrap(), "1985-01-01");
    assert_eq!(text(&g(Day), TIMESTAMPTZ, "2024-03-05 13:45:12.25+01").unwrap(), "2024-03-05 00:00:00+01");
    assert_eq!(text(&g(Hour), TIMESTAMP, "2024-03-05 13:45:12").unwrap(), "2024-03-05 13:00:00");
    assert_eq!(text(&g(Month), TIMESTAMP, "0044-03-15 10:00:00 BC").unwrap(), "0044-03-01 00:00:00 BC");
    let b = mask1(&g(Day), TIMESTAMP, Format::Binary, &bin(|b| pt::timestamp_to_sql(ts(1999, 12, 31, 5), b))).unwrap();
    assert_eq!(pt::timestamp_from_sql(&b).unwrap(), ts(1999, 12, 31, 0));
    let b = mask1(&g(Year), DATE, Format::Binary, &bin(|b| pt::date_to_sql(codec::pg_days(1985, 7, 23) as i32, b)))
        .unwrap();
    assert_eq!(i64::from(pt::date_from_sql(&b).unwrap()), codec::pg_days(1985, 1, 1));
    let net = g(Network { v4: 24, v6: 64 });
    assert_eq!(text(&net, INET, "192.168.1.77").unwrap(), "192.168.1.0/24");
    assert_eq!(text(&net, INET, "2001:db8:1:2:3:4:5:6").unwrap(), "2001:db8:1:2::/64");
    assert_eq!(text(&net, CIDR, "10.0.0.0/8").unwrap(), "10.0.0.0/8");
    let b =
        mask1(&net, INET, Format::Binary, &bin(|b| pt::inet_to_sql("192.168.1.77".parse().unwrap(), 32, b))).unwrap();
    let i = pt::inet_from_sql(&b).unwrap();
    assert_eq!((i.addr().to_string(), i.netmask()), ("192.168.1.0".to_string(), 24));
    let bucket = g(Bucket(1000));
    assert_eq!(text(&bucket, INT4, "123456").unwrap(), "123000");
    assert_eq!(text(&bucket, INT4, "-5").unwrap(), "-1000");
    assert_eq!(text(&bucket, NUMERIC, "12345.678").unwrap(), "12000");
    assert_eq!(text(&bucket, NUMERIC, "-0.5").unwrap(), "-1000");
    assert_eq!(text(&bucket, FLOAT8, "98765.25").unwrap(), "98000");
    assert_eq!(text(&g(Bucket(100_000)), INT2, "-5"), None); // out of int2 range
    let b = mask1(&bucket, NUMERIC, Format::Binary, &samples()[7].2).unwrap();
    assert_eq!(codec::numeric_bin_to_text(&b).unwrap().as_bytes(), b"12000");
    assert_eq!(text(&g(Month), TEXT, "2024-03-05"), None);
}

#[test]
fn detect_masks_found_values_only() {
    let d = ColumnAction::Detect;
    assert_eq!(
        text(&d, TEXT, "contact alice@example.com or +44 20 7946 0958").unwrap(),
        "contact ****@example.com or +** ** **** ****"
    );
    assert_eq!(
        text(&d, TEXT, "order 1234567890 on 2024-03-05, total 99.50").unwrap(),
        "order 1234567890 on 2024-03-05, total 99.50"
    );
    assert_eq!(text(&d, TEXT, "Pro plan").unwrap(), "Pro plan");
    assert_eq!(
        text(&d, JSONB, r#"{"email": "alice@example.com", "card": 4111111111111111, "n": 1}"#).unwrap(),
        r#"{"email": "****@example.com", "card": 9999999999999999, "n": 1}"#
    );
    let mut jb = vec![1u8];
    jb.extend_from_slice(br#"["555-123-4567"]"#);
    assert_eq!(mask1(&d, JSONB, Format::Binary, &jb).unwrap(), b"\x01[\"***-***-****\"]");
    assert_eq!(text(&d, INT8, "4111111111111111").unwrap(), "0");
    assert_eq!(text(&d, INT8, "1234567890123456").unwrap(), "1234567890123456");
    assert_eq!(text(&d, INET, "10.1.2.3").unwrap(), "0.0.0.0");
    assert_eq!(text(&d, CIDR, "10.1.2.0/24").unwrap(), "10.1.2.0/24");
    assert_eq!(mask1(&d, BYTEA, Format::Binary, b"mail alice@example.com"), None);
    assert_eq!(mask1(&d, BYTEA, Format::Binary, b"\x00\x01plain").unwrap(), b"\x00\x01plain");
    assert_eq!(text(&d, DATE, "1985-07-23").unwrap(), "1985-07-23");
    // Unknown types: text scanned (NULL if anything is found), binary NULL.
    assert_eq!(text(&d, 600, "(1,2)").unwrap(), "(1,2)");
    assert_eq!(text(&d, 16_999, "alice@example.com"), None);
    assert_eq!(mask1(&d, 16_999, Format::Binary, b"free"), None);
}

#[test]
fn rows_stats_and_errors() {
    let k = keys();
    let plan = RowPlan::new(
        vec![
            (ColumnAction::Allow, TypeOid(INT4), Format::Text),
            (ColumnAction::Email, TypeOid(TEXT), Format::Text),
            (ColumnAction::Detect, TypeOid(TEXT), Format::Text),
            (ColumnAction::Partial { first: 0, last: 0 }, TypeOid(INT4), Format::Text),
            (ColumnAction::Redact, TypeOid(TEXT), Format::Text),
        ],
        &k,
    );
    assert!(!plan.is_passthrough());
    assert!(RowPlan::new(vec![(ColumnAction::Allow, TypeOid(TEXT), Format::Text)], &k).is_passthrough());
    let mut body = BytesMut::new();
    body.put_i16(5);
    for v in [&b"7"[..], b"a@b.example", b"plain", b"12"] {
        body.put_i32(v.len() as i32);
        body.extend_from_slice(v);
    }
    body.put_i32(-1);
    let mut out = BytesMut::from(&b"prefix"[..]);
    let stats = mask_data_row(&plan, &body, &mut out).unwrap();
    assert_eq!(stats.get(ActionKind::Email), 1);
    assert_eq!(stats.get(ActionKind::Detect), 0);
    assert_eq!(stats.get(ActionKind::Redact), 0, "NULL stays NULL, not counted");
    assert_eq!(stats.fallback_null, 1);
    let (_, cells) = crate::wire::data_row_cells(&out[11..]).unwrap();
    let cells: Vec<_> = cells.map(|c| c.unwrap().map(<[u8]>::to_vec)).collect();
    assert_eq!(cells, vec![Some(b"7".to_vec()), Some(b"****@b.example".to_vec()), Some(b"plain".to_vec()), None, None]);
    // Per column: the same counts, by position (fallback NULLs included).
    let mut per_column = [0u64; 5];
    let counted = super::mask_data_row_counted(&plan, &body, &mut BytesMut::new(), &mut per_column).unwrap();
    assert_eq!(counted, stats);
    assert_eq!(per_column, [0, 1, 0, 1, 0]);

    // Column count mismatch and truncated bodies fail, leaving `out` untouched.
    let short = RowPlan::new(vec![(ColumnAction::Redact, TypeOid(TEXT), Format::Text)], &k);
    let mut out = BytesMut::from(&b"x"[..]);
    let e = mask_data_row(&short, &body, &mut out).unwrap_err();
    assert!(e.is_plan_mismatch());
    assert_eq!(e.to_string(), "row has 5 columns but the column plan has 1");
    assert!(mask_data_row(&plan, &body[..body.len() - 3], &mut out).is_err());
    assert_eq!(&out[..], b"x");
}

#[test]
fn no_value_in_error_messages() {
    let plan = RowPlan::new(vec![(ColumnAction::Redact, TypeOid(TEXT), Format::Text)], &keys());
    let mut body = BytesMut::new();
    body.put_i16(1);
    body.put_i32(100);
    body.extend_from_slice(b"alice@example.com");
    let e = mask_data_row(&plan, &body, &mut BytesMut::new()).unwrap_err();
    assert!(!e.to_string().contains("alice") && !format!("{e:?}").contains("alice"));
}

fn copy_all(plan: CopyPlan, chunks: &[&[u8]]) -> (Vec<u8>, RowStats) {
    let mut m = CopyMasker::new(plan);
    let mut payload = Vec::new();
    let mut stats = RowStats::default();
    for c in chunks {
        let mut out = BytesMut::new();
        stats.add(&m.push(c, &mut out).unwrap());
        let mut rest = &out[..];
        while !rest.is_empty() {
            assert_eq!(rest[0], b'd');
            let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
            payload.extend_from_slice(&rest[5..1 + len]);
            rest = &rest[1 + len..];
        }
    }
    m.finish().unwrap();
    (payload, stats)
}

#[test]
fn copy_text_and_csv() {
    let k = keys();
    let cols = || {
        vec![
            (ColumnAction::Allow, TypeOid(INT4)),
            (ColumnAction::Email, TypeOid(TEXT)),
            (ColumnAction::Detect, TypeOid(TEXT)),
        ]
    };
    let data = b"1\talice@example.com\tcall 555-123-4567\\tnow\n2\t\\N\tplain\n";
    let plan = CopyPlan::new(CopyOptions::text(), cols(), &k);
    // Split in the middle of a row: output only for complete rows.
    let (out, stats) = copy_all(plan, &[&data[..10], &data[10..40], &data[40..]]);
    assert_eq!(out, b"1\t****@example.com\tcall ***-***-****\\tnow\n2\t\\N\tplain\n");
    assert_eq!(stats.get(ActionKind::Email), 1);
    assert_eq!(stats.get(ActionKind::Detect), 1);

    let mut opts = CopyOptions::csv();
    opts.header = true;
    let plan = CopyPlan::new(opts, cols(), &k);
    let data = b"id,email,note\n1,alice@example.com,\"multi\nline 555-123-4567, \"\"q\"\"\"\n2,,\"\"\n";
    let (out, _) = copy_all(plan, &[&data[..20], &data[20..50], &data[50..]]);
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "id,email,note\n1,\"****@example.com\",\"multi\nline ***-***-****, \"\"q\"\"\"\n2,,\"\"\n"
    );

    let plan = CopyPlan::new(CopyOptions::text(), cols(), &k);
    let mut m = CopyMasker::new(plan);
    assert!(m.push(b"1\tonly two\n", &mut BytesMut::new()).is_err());
    let plan = CopyPlan::new(CopyOptions::text(), cols(), &k);
    let mut m = CopyMasker::new(plan);
    m.push(b"1\ta@b.co\tx", &mut BytesMut::new()).unwrap();
    assert!(m.finish().is_err(), "incomplete row at CopyDone");
}

#[test]
fn copy_text_with_an_escaped_delimiter_in_a_value() {
    // `COPY ... TO STDOUT (DELIMITER ',')`: a value holding a comma comes as
    // `\,`; it is one field, masked whole, and stays escaped.
    let k = keys();
    let cols = vec![
        (ColumnAction::Allow, TypeOid(INT4)),
        (ColumnAction::Redact, TypeOid(TEXT)),
        (ColumnAction::Allow, TypeOid(TEXT)),
    ];
    let mut opts = CopyOptions::text();
    opts.delimiter = b',';
    let plan = CopyPlan::new(opts, cols, &k);
    let data = b"1,12 Mill Road\\, 11870 Riverton,a\\,b\n2,\\N,x\\\\\n";
    let (out, stats) = copy_all(plan, &[&data[..7], &data[7..]]);
    let out = String::from_utf8(out).unwrap();
    assert!(!out.contains("Mill") && !out.contains("Riverton"), "{out}");
    assert_eq!(out, "1,REDACTED,a\\,b\n2,\\N,x\\\\\n");
    assert_eq!(stats.get(ActionKind::Redact), 1);
}

#[test]
fn copy_binary_streaming() {
    let k = keys();
    let plan = CopyPlan::new(
        CopyOptions::binary(),
        vec![
            (ColumnAction::Allow, TypeOid(INT4)),
            (ColumnAction::Redact, TypeOid(TEXT)),
            (ColumnAction::Redact, TypeOid(DATE)),
        ],
        &k,
    );
    let mut data = BytesMut::new();
    data.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
    data.put_i32(0);
    data.put_i32(0);
    for (id, name) in [(1, Some("alice")), (2, None)] {
        data.put_i16(3);
        data.put_i32(4);
        data.put_i32(id);
        match name {
            Some(n) => {
                data.put_i32(n.len() as i32);
                data.extend_from_slice(n.as_bytes());
            }
            None => data.put_i32(-1),
        }
        data.put_i32(4);
        data.put_i32(9000);
    }
    data.put_i16(-1);
    // Feed byte by byte: the masker must cope with any split.
    let chunks: Vec<&[u8]> = data.chunks(1).collect();
    let (out, stats) = copy_all(plan, &chunks);
    let mut want = BytesMut::new();
    want.extend_from_slice(&data[..19]);
    for (id, name) in [(1, Some(REDACTED)), (2, None)] {
        want.put_i16(3);
        want.put_i32(4);
        want.put_i32(id);
        match name {
            Some(n) => {
                want.put_i32(n.len() as i32);
                want.extend_from_slice(n.as_bytes());
            }
            None => want.put_i32(-1),
        }
        want.put_i32(4);
        want.put_i32(-10_957);
    }
    want.put_i16(-1);
    assert_eq!(out, want.to_vec());
    assert_eq!(stats.get(ActionKind::Redact), 3);
}

/// Every masked value is accepted by a real PostgreSQL server: text outputs
/// through the type's input function, binary outputs through its receive
/// function (sent as binary parameters). The server is the test harness's
/// throwaway cluster (`masker_tests::PgCluster`), so this runs wherever the
/// integration suites run, CI included.
#[test]
fn server_accepts_every_masked_value() {
    use tokio_postgres::types::{IsNull, ToSql, Type, to_sql_checked};

    #[derive(Debug)]
    struct Raw(Vec<u8>);
    impl ToSql for Raw {
        fn to_sql(&self, _: &Type, out: &mut BytesMut) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
            out.extend_from_slice(&self.0);
            Ok(IsNull::No)
        }
        fn accepts(_: &Type) -> bool {
            true
        }
        to_sql_checked!();
    }

    let name = |oid| match oid {
        TEXT => "text",
        VARCHAR => "varchar",
        BPCHAR => "bpchar",
        NAME => "name",
        INT2 => "int2",
        INT4 => "int4",
        INT8 => "int8",
        NUMERIC => "numeric",
        FLOAT4 => "float4",
        FLOAT8 => "float8",
        BOOL => "bool",
        DATE => "date",
        TIME => "time",
        TIMESTAMP => "timestamp",
        TIMESTAMPTZ => "timestamptz",
        INTERVAL => "interval",
        INET => "inet",
        CIDR => "cidr",
        UUID => "uuid",
        JSON => "json",
        JSONB => "jsonb",
        BYTEA => "bytea",
        _ => unreachable!(),
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let client = masker_tests::PgCluster::shared().app().connect().await.expect("the harness's PostgreSQL");
        let mut checked = 0;
        for (oid, t, b) in samples() {
            for action in all_actions() {
                for (fmt, input) in [(Format::Text, t.as_bytes()), (Format::Binary, &b[..])] {
                    let masked = mask1(&action, oid, fmt, input);
                    assert_eq!(masked.is_some(), yields_value(&action, oid), "{action:?} {oid} {fmt:?}: {masked:?}");
                    let Some(out) = masked else { continue };
                    let res = match fmt {
                        Format::Text => {
                            let s = String::from_utf8(out.clone()).unwrap();
                            client.query_one(&format!("SELECT ($1::text)::{}::text", name(oid)), &[&s]).await
                        }
                        Format::Binary => {
                            client.query_one(&format!("SELECT $1::{}::text", name(oid)), &[&Raw(out.clone())]).await
                        }
                    };
                    if let Err(e) = res {
                        panic!("{action:?} {} {fmt:?} {:?}: {e:?}", name(oid), String::from_utf8_lossy(&out));
                    }
                    checked += 1;
                }
            }
        }
        // Arrays, text and binary.
        for action in all_actions() {
            for (oid, ty, text_in) in [
                (1007u32, "int4[]", "{4111111,NULL,42}"),
                (1009, "text[]", r#"{alice@example.com,"call 555-123-4567","a\"b"}"#),
                (1182, "date[]", "{1985-07-23,NULL}"),
                (1041, "inet[]", "{10.1.2.3,2001:db8::1}"),
                (1231, "numeric[]", "{1.50,-20000}"),
            ] {
                let row = client.query_one(&format!("SELECT array_send($1::text::{ty})"), &[&text_in]).await.unwrap();
                let binary_in: Vec<u8> = row.get(0);
                for (fmt, input) in [(Format::Text, text_in.as_bytes()), (Format::Binary, &binary_in[..])] {
                    let masked = mask1(&action, oid, fmt, input);
                    assert_eq!(masked.is_some(), action != ColumnAction::Null, "{action:?} {ty} {fmt:?}: {masked:?}");
                    let Some(out) = masked else { continue };
                    let res = match fmt {
                        Format::Text => {
                            let s = String::from_utf8(out.clone()).unwrap();
                            client.query_one(&format!("SELECT ($1::text)::{ty}::text"), &[&s]).await
                        }
                        Format::Binary => {
                            client.query_one(&format!("SELECT $1::{ty}::text"), &[&Raw(out.clone())]).await
                        }
                    };
                    if let Err(e) = res {
                        panic!("{action:?} {ty} {fmt:?} {:?}: {e:?}", String::from_utf8_lossy(&out));
                    }
                    checked += 1;
                }
            }
        }
        assert!(checked > 300, "{checked}");
    });
}

/// Found by the `cell` fuzz target: a binary timestamp near the type's
/// lower end, truncated to its year, fell below what an i64 of
/// microseconds holds (an overflow panic in debug builds). Such a value
/// takes the action's fallback; nothing raw comes back.
#[test]
fn pseudonymizing_a_timestamp_beyond_postgresql_s_range_does_not_overflow() {
    // The fuzz `cell` target's find: a text timestamp in the year 12131024
    // (PostgreSQL stops at 294276; only a hostile peer sends it) overflowed
    // the microsecond count. It now has no pseudonym: NULL, as any value
    // that cannot be pseudonymized.
    let ps = ColumnAction::Pseudonymize { format_preserving: false };
    for oid in [TIMESTAMP, TIMESTAMPTZ] {
        assert_eq!(text(&ps, oid, "12131024-01-02 03:04:05.123454"), None, "oid {oid}");
        assert_eq!(text(&ps, oid, "999999999-12-31 23:59:59+14"), None, "oid {oid}");
        assert!(text(&ps, oid, "2024-01-02 03:04:05.123454").is_some(), "oid {oid}");
    }
}

#[test]
fn generalizing_a_timestamp_near_the_type_s_end_does_not_overflow() {
    let year = ColumnAction::Generalize(Generalize::Year);
    for oid in [1114, 1184] {
        let v = (i64::MIN + 1).to_be_bytes();
        let masked = mask1(&year, oid, Format::Binary, &v);
        assert_ne!(masked.as_deref(), Some(&v[..]), "oid {oid}");
    }
}

#[test]
fn copy_csv_reads_a_quote_inside_a_field_as_postgresql_does() {
    // PostgreSQL opens a quoted section at a quote anywhere in a CSV field:
    // `a"b,c"d` is one field `ab,cd`. Read otherwise, its comma would split
    // the row and shift every later column.
    let k = keys();
    let cols = vec![(ColumnAction::Redact, TypeOid(TEXT)), (ColumnAction::Allow, TypeOid(TEXT))];
    let plan = CopyPlan::new(CopyOptions::csv(), cols.clone(), &k);
    let (out, _) = copy_all(plan, &[b"a\"b,c\"d,kept\n"]);
    assert_eq!(String::from_utf8(out).unwrap(), "\"REDACTED\",kept\n");
    // A header with such a quote may span lines; it is passed as it came.
    let mut opts = CopyOptions::csv();
    opts.header = true;
    let plan = CopyPlan::new(opts, cols, &k);
    let data = b"na\"me\nx\",note\nsecret,kept\n";
    let (out, _) = copy_all(plan, &[&data[..5], &data[5..]]);
    assert_eq!(String::from_utf8(out).unwrap(), "na\"me\nx\",note\n\"REDACTED\",kept\n");
}

#[test]
fn definitions_are_scrubbed_once_per_text() {
    let names = ClassifiedNames::new(|c| c == "email");
    let view = "SELECT id FROM customers WHERE email = 'jane@example.com'";
    let first = names.scrub(view).expect("scrubbed");
    assert!(!first.contains("jane") && first.contains("email"), "{first}");
    // Remembered: the same answer again, and an unchanged text stays None.
    assert_eq!(names.scrub(view).as_deref(), Some(&*first));
    assert_eq!(names.scrub("nextval('orders_id_seq'::regclass)"), None);
    assert_eq!(names.scrub("nextval('orders_id_seq'::regclass)"), None);
    // Another policy's names decide for themselves.
    let none = ClassifiedNames::new(|_| false);
    assert_eq!(none.scrub(view), None);
}

#[test]
fn array_elements_padded_with_vertical_tab_or_form_feed_are_read_as_postgresql_does() {
    // array_in skips \v and \f around an unquoted element as it skips
    // spaces: the element is `4`, and its format-preserving pseudonym is a
    // digit, still a valid numeric (it used to keep the \f inside quotes).
    let plan = RowPlan::new(
        vec![(ColumnAction::Pseudonymize { format_preserving: true }, TypeOid(1231), Format::Text)],
        &keys(),
    );
    let mut body = BytesMut::new();
    body.put_i16(1);
    let v = b"{\x0c4\n\x0b,NULL}";
    body.put_i32(v.len() as i32);
    body.extend_from_slice(v);
    let mut out = BytesMut::new();
    mask_data_row(&plan, &body, &mut out).unwrap();
    let text = String::from_utf8_lossy(&out[11..]).into_owned();
    let first = text.trim_start_matches('{').split(',').next().unwrap_or_default().trim_matches('"').to_owned();
    assert!(first.len() == 1 && first.bytes().all(|b| b.is_ascii_digit()), "{text:?}");
    assert!(text.ends_with(",NULL}"), "{text:?}");
}

#[test]
fn pseudonyms_stay_the_same_from_version_to_version() {
    // Agents sharing a key must agree on pseudonyms whatever their version:
    // these values were produced by the `hmac`-crate implementation before
    // the pseudonym HMAC was precomputed (issue 17).
    let fp = ColumnAction::Pseudonymize { format_preserving: true };
    let plain = ColumnAction::Pseudonymize { format_preserving: false };
    let long =
        "a much longer value that spans more than one sha-256 block of sixty-four bytes, to check the streaming path";
    let cases = [
        (&fp, 25u32, "123-45-6789", "060-88-0006"),
        (&fp, 25, "Jane.Doe7@example.com", "Tywc.Vgj3@d1fb9f35e00.invalid"),
        (&fp, 25, "Zoë Ångström 42", "Qii vphuutmr 03"),
        (&plain, 25, "Jane Doe", "psd_8bbdd3487ef7fb6f"),
        (&fp, 23, "123456", "970946"),
        (&plain, 1043, long, "psd_0ad101b43947df68"),
    ];
    for (action, oid, value, expected) in cases {
        assert_eq!(text(action, oid, value).as_deref(), Some(expected), "{value}");
    }
}
