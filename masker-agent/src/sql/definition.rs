//! SQL text written by people and kept in the catalog — view and rule
//! definitions, function bodies, column defaults, check constraints,
//! row-security policies, index predicates — can embed personal data as
//! literals (`CREATE VIEW vip AS ... WHERE email IN ('jane@...')`). Such
//! text reaches clients through `\d+`, `pg_dump --schema-only` and ORM
//! reflection, which must keep working.
//!
//! [`scrub_definition`] replaces the literals that stand against a
//! classified column — compared with it, matched against it, assigned to
//! it — and leaves the definition's structure and every other literal as
//! they are. SQL is read with PostgreSQL's parser (literal positions come
//! from the parse tree); text it cannot parse as SQL (PL/pgSQL bodies) is
//! read token by token with PostgreSQL's scanner, around each mention of a
//! classified column.
//!
//! Pure: no I/O.

use std::borrow::Cow;

use pg_query::protobuf::{self as pb, Token};
use serde_json::Value;

use super::trace::walk_json;

/// A literal's kind, as PostgreSQL's grammar tells them apart: each is
/// replaced by a placeholder of its own kind, so that scrubbing never turns
/// text the parser rejects into text it accepts or the other way round (a
/// name followed by a bit string, `o B'1'`, is no SQL; followed by a
/// string, `o '***'`, it is a typed literal), and scrubbing the scrubbed
/// text changes nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Lit {
    /// `'...'`, `E'...'`, `$$...$$` (replaced by `'***'`, `E'***'`,
    /// `$$***$$`).
    String,
    /// `U&'...'` (its `UESCAPE` clause, a token of its own, stays valid).
    Unicode,
    /// `B'...'`.
    Bits,
    /// `X'...'`.
    Hex,
    /// `123`.
    Integer,
    /// `1.5`, `1e3`, and integers too large for `int4`.
    Float,
}

impl Lit {
    fn placeholder(self) -> &'static str {
        match self {
            Lit::String => "'***'",
            Lit::Unicode => "U&'***'",
            Lit::Bits => "B''",
            Lit::Hex => "X''",
            Lit::Integer => "0",
            Lit::Float => "0.0",
        }
    }

    fn numeric(self) -> bool {
        matches!(self, Lit::Integer | Lit::Float)
    }
}

/// How deep function bodies inside definitions are followed.
const MAX_NESTING: usize = 4;

/// Operators that compare or match (see `trace::COMPARISONS`).
const MATCHING_OPERATORS: &[&str] = &[
    "=", "<>", "!=", "<", ">", "<=", ">=", "~~", "!~~", "~~*", "!~~*", "~", "!~", "~*", "!~*", "^@", "@@", "@>", "<@",
    "&&",
];

/// Functions that match a value against a pattern or a string.
const MATCHING_FUNCTIONS: &[&str] = &[
    "starts_with",
    "strpos",
    "position",
    "regexp_like",
    "regexp_match",
    "regexp_matches",
    "regexp_count",
    "regexp_instr",
    "textregexeq",
    "texticregexeq",
    "textlike",
    "nullif",
];

/// `text` with every literal that stands against a column for which
/// `classified(column_name)` holds replaced by a placeholder of its kind:
/// `'***'` (strings), `0` or `0.0` (numbers), `B''`, `X''`, `U&'***'`.
/// Column names are compared lower case, unqualified.
pub fn scrub_definition<'t>(text: &'t str, classified: &(dyn Fn(&str) -> bool + Sync)) -> Cow<'t, str> {
    let mut spans = super::with_parse_stack(text, || {
        let mut spans = Vec::new();
        collect(text, 0, classified, &mut spans, 0);
        spans
    });
    if spans.is_empty() {
        return Cow::Borrowed(text);
    }
    spans.sort();
    spans.dedup();
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for (start, end, lit) in spans {
        if start < at || end > text.len() || !text.is_char_boundary(start) || !text.is_char_boundary(end) {
            continue;
        }
        out.push_str(&text[at..start]);
        // A placeholder must stay the token it replaces: two literals
        // written back to back (`'a'e'b'`, `1.2.3`) would otherwise read
        // as one (`'***''***'`, `00`), and a literal glued to a name (`c.7`,
        // where `.7` is the literal) would become part of it (`c0`).
        let glues = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'$' | b'.') || b >= 0x80;
        // A string keeps how it starts: a quoted string, white space with a
        // line break and a plain quoted string are one string to PostgreSQL
        // (`'a'` LF `'b'`), while a dollar-quoted or `E''` string after them
        // is a string of its own.
        let placeholder = match (lit, text.as_bytes()[start]) {
            (Lit::String, b'$') => "$$***$$",
            (Lit::String, b'e' | b'E') => "E'***'",
            _ => lit.placeholder(),
        };
        let glued_before = match out.as_bytes().last() {
            Some(b'\'') => placeholder.starts_with('\''),
            Some(&b) => glues(b) && placeholder.as_bytes()[0] != b'\'',
            None => false,
        };
        if glued_before {
            out.push(' ');
        }
        out.push_str(placeholder);
        if lit.numeric() && text.as_bytes().get(end).is_some_and(|&b| glues(b)) {
            out.push(' ');
        }
        at = end;
    }
    out.push_str(&text[at..]);
    Cow::Owned(out)
}

/// A literal's byte range in the text and its kind.
type Span = (usize, usize, Lit);

struct Tokens {
    list: Vec<pb::ScanToken>,
}

impl Tokens {
    fn scan(text: &str) -> Option<Tokens> {
        pg_query::scan(text).ok().map(|r| Tokens { list: r.tokens })
    }

    /// The literal token starting at `location`, as a span. A negative
    /// number's constant is located at its minus sign (the parser folds
    /// `- 5` into the constant `-5`): the number after the sign is the span.
    fn literal_at(&self, location: usize) -> Option<Span> {
        let i = self.list.iter().position(|t| t.start as usize == location)?;
        let t = &self.list[i];
        if Token::try_from(t.token) == Ok(Token::Ascii45) {
            return self.list.get(i + 1).and_then(literal_span).filter(|(_, _, lit)| lit.numeric());
        }
        literal_span(t)
    }
}

fn literal_span(t: &pb::ScanToken) -> Option<Span> {
    let lit = match Token::try_from(t.token).ok()? {
        Token::Sconst => Lit::String,
        Token::Usconst => Lit::Unicode,
        Token::Bconst => Lit::Bits,
        Token::Xconst => Lit::Hex,
        Token::Iconst => Lit::Integer,
        Token::Fconst => Lit::Float,
        _ => return None,
    };
    Some((t.start as usize, t.end as usize, lit))
}

/// Collects the spans of `text` (which starts at `base` in the original).
fn collect(text: &str, base: usize, classified: &dyn Fn(&str) -> bool, spans: &mut Vec<Span>, depth: usize) {
    if depth > MAX_NESTING {
        return;
    }
    let Some(tokens) = Tokens::scan(text) else { return };
    if let Ok(parsed) = pg_query::parse(text, 0) {
        tree(&parsed.protobuf, text, &tokens, 0, base, classified, spans, depth);
        return;
    }
    // An expression (a default, a policy's USING, an index predicate) or
    // a constraint (`CHECK (...)`): read as `SELECT <expression>`.
    let expr = text.trim_start();
    let lead = text.len() - expr.len();
    let (expr, lead) = match expr.get(..5) {
        Some(k) if k.eq_ignore_ascii_case("check") => (&expr[5..], lead + 5),
        _ => (expr, lead),
    };
    let wrapped = format!("SELECT {expr}");
    if let Ok(parsed) = pg_query::parse(&wrapped, 0)
        && let Some(wtokens) = Tokens::scan(&wrapped)
    {
        // Positions in `wrapped` are 7 bytes ahead of `expr`, which is
        // `lead` bytes into `text`.
        let shift = lead as isize - 7;
        tree(&parsed.protobuf, &wrapped, &wtokens, shift, base, classified, spans, depth);
        return;
    }
    by_tokens(text, &tokens, base, classified, spans);
}

/// Literal spans from a parse tree of `text`; positions are moved by
/// `shift` (into the text the caller scrubs) and `base`.
///
/// The tree is walked in its JSON form, where every node, however deep, is
/// an object `{"node": {"<Kind>": {...}}}`.
#[allow(clippy::too_many_arguments)]
fn tree(
    parsed: &pb::ParseResult,
    text: &str,
    tokens: &Tokens,
    shift: isize,
    base: usize,
    classified: &dyn Fn(&str) -> bool,
    spans: &mut Vec<Span>,
    depth: usize,
) {
    let Ok(json) = serde_json::to_value(parsed) else { return };
    let mut locations: Vec<usize> = Vec::new();
    let mut bodies: Vec<(String, bool)> = Vec::new();
    walk_json(&json, &mut |kind, v| match kind {
        "AExpr" => {
            let op = v.get("name").and_then(Value::as_array).and_then(|n| n.last()).and_then(string_node).unwrap_or("");
            let matching = match v.get("kind").and_then(Value::as_i64).unwrap_or(0) {
                0 => false,
                k if k == pb::AExprKind::AexprOp as i64 => MATCHING_OPERATORS.contains(&op),
                _ => true,
            };
            if !matching {
                return;
            }
            let (l, r) = (v.get("lexpr"), v.get("rexpr"));
            if l.is_some_and(|n| mentions(n, classified)) {
                literals_in(r, &mut locations);
            }
            if r.is_some_and(|n| mentions(n, classified)) {
                literals_in(l, &mut locations);
            }
        }
        "FuncCall" => {
            let name = v
                .get("funcname")
                .and_then(Value::as_array)
                .and_then(|n| n.last())
                .and_then(string_node)
                .unwrap_or("")
                .to_ascii_lowercase();
            let args = v.get("args").and_then(Value::as_array).map(Vec::as_slice).unwrap_or(&[]);
            if MATCHING_FUNCTIONS.contains(&name.as_str()) && args.iter().any(|a| mentions(a, classified)) {
                for a in args.iter().filter(|a| !mentions(a, classified)) {
                    literals_in(Some(a), &mut locations);
                }
            }
        }
        "CaseExpr" if v.get("arg").is_some_and(|n| mentions(n, classified)) => {
            for w in v.get("args").and_then(Value::as_array).into_iter().flatten() {
                literals_in(node_of(w, "CaseWhen").and_then(|w| w.get("expr")), &mut locations);
            }
        }
        "UpdateStmt" => {
            for t in v.get("target_list").and_then(Value::as_array).into_iter().flatten() {
                if let Some(rt) = node_of(t, "ResTarget")
                    && rt.get("name").and_then(Value::as_str).is_some_and(|n| classified(&n.to_ascii_lowercase()))
                {
                    literals_in(rt.get("val"), &mut locations);
                }
            }
        }
        "InsertStmt" => {
            let columns: Vec<bool> = v
                .get("cols")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(|c| {
                    node_of(c, "ResTarget")
                        .and_then(|rt| rt.get("name"))
                        .and_then(Value::as_str)
                        .is_some_and(|n| classified(&n.to_ascii_lowercase()))
                })
                .collect();
            let rows = v.get("select_stmt").and_then(|s| node_of(s, "SelectStmt")).and_then(|s| s.get("values_lists"));
            for row in rows.and_then(Value::as_array).into_iter().flatten() {
                let items = node_of(row, "List").and_then(|l| l.get("items")).and_then(Value::as_array);
                for (item, hit) in items.into_iter().flatten().zip(&columns) {
                    if *hit {
                        literals_in(Some(item), &mut locations);
                    }
                }
            }
        }
        "CreateFunctionStmt" | "DoStmt" => {
            let list = if kind == "DoStmt" { v.get("args") } else { v.get("options") };
            let mut body = None;
            let mut sql = false;
            for o in list.and_then(Value::as_array).into_iter().flatten() {
                let Some(e) = node_of(o, "DefElem") else { continue };
                let arg = e.get("arg");
                match e.get("defname").and_then(Value::as_str) {
                    Some("as") => {
                        body = arg.and_then(string_node).or_else(|| {
                            arg.and_then(|a| node_of(a, "List"))
                                .and_then(|l| l.get("items"))
                                .and_then(Value::as_array)
                                .and_then(|i| i.first())
                                .and_then(string_node)
                        })
                    }
                    Some("language") => sql = arg.and_then(string_node).is_some_and(|l| l.eq_ignore_ascii_case("sql")),
                    _ => {}
                }
            }
            if let Some(b) = body {
                bodies.push((b.to_string(), sql));
            }
        }
        _ => {}
    });
    for (body, sql) in bodies {
        nested_body(&body, sql, text, tokens, shift, base, classified, spans, depth);
    }
    for loc in locations {
        if let Some((s, e, lit)) = tokens.literal_at(loc) {
            let (s, e) = (s as isize + shift, e as isize + shift);
            if s >= 0 {
                spans.push((base + s as usize, base + e as usize, lit));
            }
        }
    }
}

/// The body of node `v` if it is a `kind` node.
fn node_of<'v>(v: &'v Value, kind: &str) -> Option<&'v Value> {
    v.get("node")?.get(kind)
}

/// The text of a `String` node.
fn string_node(v: &Value) -> Option<&str> {
    node_of(v, "String")?.get("sval")?.as_str()
}

/// Whether a classified column is named anywhere in `v`.
fn mentions(v: &Value, classified: &dyn Fn(&str) -> bool) -> bool {
    let mut found = false;
    walk_json(v, &mut |kind, body| {
        if kind == "ColumnRef"
            && let Some(last) =
                body.get("fields").and_then(Value::as_array).and_then(|f| f.iter().rev().find_map(string_node))
            && classified(&last.to_ascii_lowercase())
        {
            found = true;
        }
    });
    found
}

/// The locations of the literals in `v`.
fn literals_in(v: Option<&Value>, out: &mut Vec<usize>) {
    let Some(v) = v else { return };
    walk_json(v, &mut |kind, body| {
        if kind == "AConst"
            && !body.get("isnull").and_then(Value::as_bool).unwrap_or(false)
            && let Some(loc) = body.get("location").and_then(Value::as_i64)
            && loc >= 0
        {
            out.push(loc as usize);
        }
    });
}

/// Scrubs a body that appears in `text` as one dollar-quoted string
/// constant: SQL (`sql`) or procedural code.
#[allow(clippy::too_many_arguments)]
fn nested_body(
    body: &str,
    sql: bool,
    text: &str,
    tokens: &Tokens,
    shift: isize,
    base: usize,
    classified: &dyn Fn(&str) -> bool,
    spans: &mut Vec<Span>,
    depth: usize,
) {
    for t in &tokens.list {
        if Token::try_from(t.token) != Ok(Token::Sconst) {
            continue;
        }
        let (s, e) = (t.start as usize, t.end as usize);
        let Some(token_text) = text.get(s..e) else { continue };
        if !token_text.starts_with('$') {
            continue;
        }
        let Some(open) = token_text[1..].find('$').map(|i| i + 2) else { continue };
        let close = token_text.len().saturating_sub(open);
        if close < open || token_text.get(open..close) != Some(body) {
            continue;
        }
        let inner_start = s as isize + open as isize + shift;
        if inner_start < 0 {
            return;
        }
        let inner_base = base + inner_start as usize;
        if sql {
            collect(body, inner_base, classified, spans, depth + 1);
        } else if let Some(body_tokens) = Tokens::scan(body) {
            by_tokens(body, &body_tokens, inner_base, classified, spans);
        }
        return;
    }
}

/// Token by token, for text that is not SQL (PL/pgSQL): around each
/// identifier naming a classified column, the literals on the other side
/// of the nearest comparison or assignment.
fn by_tokens(text: &str, tokens: &Tokens, base: usize, classified: &dyn Fn(&str) -> bool, spans: &mut Vec<Span>) {
    let list = &tokens.list;
    let word = |t: &pb::ScanToken| text.get(t.start as usize..t.end as usize).unwrap_or("");
    let is_comparison = |t: &pb::ScanToken| {
        let w = word(t).to_ascii_lowercase();
        matches!(Token::try_from(t.token), Ok(Token::ColonEquals))
            || MATCHING_OPERATORS.contains(&w.as_str())
            || matches!(w.as_str(), "like" | "ilike" | "similar" | "in" | "between")
    };
    let stops = |t: &pb::ScanToken| {
        let w = word(t).to_ascii_lowercase();
        matches!(Token::try_from(t.token), Ok(Token::Ascii59) | Ok(Token::Ascii44))
            || matches!(
                w.as_str(),
                "and"
                    | "or"
                    | "then"
                    | "else"
                    | "end"
                    | "loop"
                    | "where"
                    | "from"
                    | "order"
                    | "group"
                    | "limit"
                    | "into"
            )
    };
    for (i, t) in list.iter().enumerate() {
        let is_name = matches!(Token::try_from(t.token), Ok(Token::Ident)) || t.keyword_kind != 0;
        let name = word(t).trim_matches('"').to_ascii_lowercase();
        if !is_name || !classified(&name) {
            continue;
        }
        // Forward: `col [) ::type] op <literals until a stop>`.
        if let Some(op) = (i + 1..list.len().min(i + 8)).find(|&j| is_comparison(&list[j])) {
            let mut depth = 0i32;
            for t in &list[op + 1..] {
                match Token::try_from(t.token) {
                    Ok(Token::Ascii40) => depth += 1,
                    Ok(Token::Ascii41) => {
                        depth -= 1;
                        if depth < 0 {
                            break;
                        }
                    }
                    _ => {}
                }
                if depth == 0 && stops(t) {
                    break;
                }
                if let Some((s, e, n)) = literal_span(t) {
                    spans.push((base + s, base + e, n));
                }
            }
        }
        // Backward: `<literal [::type]> op [(] col`.
        if let Some(op) = (i.saturating_sub(6)..i).rev().find(|&j| is_comparison(&list[j])) {
            for t in list[..op].iter().rev().take(6) {
                if stops(t) {
                    break;
                }
                if let Some((s, e, n)) = literal_span(t) {
                    spans.push((base + s, base + e, n));
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pii(c: &str) -> bool {
        matches!(c, "email" | "ssn" | "full_name" | "date_of_birth")
    }

    fn scrub(t: &str) -> String {
        scrub_definition(t, &pii).into_owned()
    }

    #[test]
    fn literals_written_back_to_back_stay_apart_and_scrubbing_is_stable() {
        // Not valid SQL (a definition never is like this), but the scrubbed
        // text must not merge two literals into one: the fuzz `definition`
        // target's find.
        let t = "SELECT id FROM customers c WHERE c.full_name IN ('Ali'e'c, Bob') OR c.ssn IN (1.2.3)";
        let once = scrub(t);
        assert!(!once.contains("Ali") && !once.contains("Bob"), "{once}");
        assert_eq!(scrub(&once), once, "stable");
    }

    #[test]
    fn a_number_glued_to_a_name_stays_a_number() {
        // The fuzz `definition` target's second find (not SQL either): the
        // literal `.7` of `c.7` scrubbed to `0` made the name `c0`, and a
        // second pass then read the text differently.
        let with_e = |c: &str| c.contains('e');
        let t = "888^@88 Sc88888888000000000c.7 ~TEEC Sc. AND \u{fffd}.ag\u{1}";
        let once = scrub_definition(t, &with_e).into_owned();
        assert_ne!(once, t, "the literal stands against a classified name");
        assert_eq!(scrub_definition(&once, &with_e), once, "stable");
        let sql = "SELECT 1 FROM t c WHERE c.email = 1.5.3 AND c.email = x.7";
        let once = scrub(sql);
        assert!(!once.contains('5') && !once.contains('7'), "{once}");
        assert_eq!(scrub(&once), once, "stable");
    }

    #[test]
    fn view_definition_as_pg_get_viewdef_prints_it() {
        let def = " SELECT customers.id,\n    customers.plan\n   FROM app.customers\n  WHERE ((customers.email)::text = ANY ((ARRAY['dosterman850@mail.example.com'::character varying, 'crowhurst.michelle6q@example.org'::character varying])::text[])) AND customers.plan = 'pro'::text;";
        let out = scrub(def);
        assert!(!out.contains("dosterman850") && !out.contains("crowhurst"), "{out}");
        assert!(out.contains("'***'::character varying, '***'::character varying"), "{out}");
        // Everything else stays byte for byte, including other literals.
        assert!(out.contains("customers.plan = 'pro'::text"), "{out}");
        let want = def
            .replace("'dosterman850@mail.example.com'", "'***'")
            .replace("'crowhurst.michelle6q@example.org'", "'***'");
        assert_eq!(out, want);
    }

    #[test]
    fn clean_definitions_are_borrowed_unchanged() {
        let def = " SELECT customers.id, customers.email FROM app.customers WHERE customers.plan = 'pro'::text;";
        assert!(matches!(scrub_definition(def, &pii), Cow::Borrowed(_)));
    }

    #[test]
    fn expressions_constraints_and_defaults() {
        assert_eq!(scrub("CHECK ((email <> 'root@example.com'::text))"), "CHECK ((email <> '***'::text))");
        assert_eq!(scrub("(lower(email) = 'a@b.c'::text)"), "(lower(email) = '***'::text)");
        assert_eq!(scrub("'hello'::text"), "'hello'::text");
        assert_eq!(scrub("(ssn ~~ '123-%'::text)"), "(ssn ~~ '***'::text)");
        assert_eq!(scrub("starts_with(full_name, 'Jane')"), "starts_with(full_name, '***')");
        assert_eq!(scrub("CASE ssn WHEN '1' THEN 'a' END"), "CASE ssn WHEN '***' THEN 'a' END");
    }

    #[test]
    fn sql_and_plpgsql_function_bodies() {
        let f = "CREATE OR REPLACE FUNCTION app.f()\n RETURNS integer\n LANGUAGE sql\nAS $function$\n    SELECT count(*)::int FROM app.customers WHERE email = 'jane@example.com' AND plan = 'x'\n$function$\n";
        let out = scrub(f);
        assert!(!out.contains("jane@example.com") && out.contains("plan = 'x'"), "{out}");
        let p = "CREATE OR REPLACE FUNCTION app.g()\n RETURNS void\n LANGUAGE plpgsql\nAS $function$\nBEGIN\n  IF EXISTS (SELECT 1 FROM app.customers c WHERE c.ssn = '123-45-6789') THEN\n    RAISE NOTICE 'found';\n  END IF;\n  UPDATE app.customers SET email = 'x@y.z' WHERE id = 1;\nEND\n$function$\n";
        let out = scrub(p);
        assert!(!out.contains("123-45-6789") && !out.contains("x@y.z"), "{out}");
        assert!(out.contains("RAISE NOTICE 'found'") && out.contains("id = 1"), "{out}");
        // A bare plpgsql body (pg_proc.prosrc).
        let body = "\nBEGIN\n  PERFORM 1 FROM app.customers WHERE full_name = 'Jane Roe';\nEND\n";
        assert!(!scrub(body).contains("Jane Roe"));
    }

    #[test]
    fn inserts_and_updates_assign() {
        let r =
            "CREATE RULE r AS ON INSERT TO app.t DO ALSO INSERT INTO app.log (email, note) VALUES ('a@b.c', 'kept')";
        let out = scrub(r);
        assert!(!out.contains("a@b.c") && out.contains("'kept'"), "{out}");
        let u = "UPDATE app.customers SET ssn = '000-00-0000', plan = 'free' WHERE id = 3";
        let out = scrub(u);
        assert!(!out.contains("000-00-0000") && out.contains("'free'"), "{out}");
    }

    #[test]
    fn each_literal_is_replaced_by_one_of_its_kind() {
        // The fuzz `definition` target's third find (not SQL): `o B'b'` is
        // a syntax error, `o '***'` a typed literal, so the scrubbed text
        // parsed and a second pass replaced the `2` as well.
        let with_e = |c: &str| c.contains('e');
        let t = "2::n<@nnnna!adn~~*me IN ('A\u{fffd}\u{fffd}ce',o B'b');";
        let once = scrub_definition(t, &with_e).into_owned();
        assert_eq!(once, "2::n<@nnnna!adn~~*me IN ('***',o B'');");
        assert_eq!(scrub_definition(&once, &with_e), once, "stable");
        // Valid SQL: every kind keeps its kind, and the text still parses.
        let sql = "SELECT 1 FROM t WHERE ssn = B'1010' OR ssn = X'1F' OR email = U&'d\\0061t\\+000061' \
                   UESCAPE '\\' OR ssn = 1.5 OR ssn = 12345678901 OR ssn = 7 OR email = E'a\\'b'";
        let once = scrub(sql);
        assert_eq!(
            once,
            "SELECT 1 FROM t WHERE ssn = B'' OR ssn = X'' OR email = U&'***' UESCAPE '\\' OR ssn = 0.0 OR \
             ssn = 0.0 OR ssn = 0 OR email = E'***'"
        );
        // The target's fourth find: dollar-quoted strings separated by a
        // line break, scrubbed to `'***'` CR `'***'`, became one string.
        let t = " SECRme IN ($$$$$$$$$$$$\r$$$$$$$$0$$3$ OR.c.$$$\u{fffd}e I\u{4}$$$\u{fffd}$$'Alice', 'Bob');";
        let dollars = scrub_definition(t, &|_: &str| true).into_owned();
        assert!(!dollars.contains("Alice") && !dollars.contains("Bob"), "{dollars}");
        assert_eq!(scrub_definition(&dollars, &|_: &str| true), dollars, "stable");
        let dollars = "SELECT 1 FROM t WHERE email IN ($$a@b.c$$\n, $x$d@e.f$x$\n, 'g@h.i')";
        assert_eq!(scrub(dollars), "SELECT 1 FROM t WHERE email IN ($$***$$\n, $$***$$\n, '***')");
        // The same with an E'' string after a plain one (no SQL either).
        let t = "SELECT 1 FROM t WHERE email IN ('a@b.c'\nE'd@e.f')";
        let strings = scrub(t);
        assert_eq!(strings, "SELECT 1 FROM t WHERE email IN ('***'\nE'***')");
        assert_eq!(scrub(&strings), strings, "stable");
        // A negative number is located at its sign.
        assert_eq!(
            scrub("SELECT 1 FROM t WHERE ssn = -5 OR ssn = - 2.5"),
            "SELECT 1 FROM t WHERE ssn = -0 OR ssn = - 0.0"
        );
        assert!(pg_query::parse(&once, 0).is_ok(), "{once}");
        assert_eq!(scrub(&once), once, "stable");
    }

    #[test]
    fn numbers_and_garbage() {
        assert_eq!(scrub("(ssn = 123456789)"), "(ssn = 0)");
        // Text that is not SQL at all is left alone (nothing to anchor on).
        assert_eq!(scrub("not sql at all 'x'"), "not sql at all 'x'");
    }
}
