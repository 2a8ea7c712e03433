//! Parse-and-trace cost of SQL lineage per statement, cold (parsed and
//! traced every time) and cached (the per-text cache hit the relay sees for a
//! repeated statement). Run by `cargo xtask bench lineage` (release profile);
//! prints one line per statement: `name<TAB>cold µs<TAB>cached µs`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use masker_agent::sql;

const STATEMENTS: &[(&str, &str)] = &[
    ("pgbench -S", "SELECT abalance FROM pgbench_accounts WHERE aid = $1"),
    ("join + filter", "SELECT c.id, c.email, o.amount FROM customers c JOIN orders o ON o.customer_id = c.id WHERE o.status = 'paid'"),
    ("star", "SELECT * FROM customers WHERE id < 100"),
    ("whole row", "SELECT row_to_json(c) FROM customers c WHERE c.id = 1"),
    ("aggregates", "SELECT plan, count(*), sum(balance), string_agg(email, ',') FROM customers GROUP BY plan ORDER BY 2 DESC"),
    (
        "CTE + window",
        "WITH recent AS (SELECT customer_id, amount, created_at FROM orders WHERE created_at > now() - interval '30 days') \
         SELECT c.full_name, r.amount, rank() OVER (PARTITION BY c.plan ORDER BY r.amount DESC) \
         FROM recent r JOIN customers c ON c.id = r.customer_id",
    ),
    (
        "analytic (30 lines)",
        "WITH monthly AS (
           SELECT date_trunc('month', o.created_at) AS month, c.plan, sum(o.amount) AS revenue, count(DISTINCT c.id) AS buyers
             FROM orders o JOIN customers c ON c.id = o.customer_id
            WHERE o.status IN ('paid', 'shipped')
            GROUP BY 1, 2),
         ranked AS (
           SELECT month, plan, revenue, buyers,
                  lag(revenue) OVER (PARTITION BY plan ORDER BY month) AS prev,
                  revenue / nullif(buyers, 0) AS per_buyer
             FROM monthly)
         SELECT month, plan, revenue, buyers, per_buyer,
                CASE WHEN prev IS NULL THEN NULL ELSE round((revenue - prev) / prev * 100, 1) END AS growth,
                (SELECT count(*) FROM payments p WHERE p.paid_at >= month AND p.paid_at < month + interval '1 month') AS payments
           FROM ranked
          WHERE month > now() - interval '1 year'
          UNION ALL
         SELECT NULL, 'all', sum(revenue), sum(buyers), NULL, NULL, NULL FROM monthly
          ORDER BY 1 NULLS LAST, 2",
    ),
];

/// Mean time of `f` over as many runs as fit in `budget` (at least 10).
fn mean_micros(budget: Duration, mut f: impl FnMut()) -> f64 {
    for _ in 0..10 {
        f();
    }
    let start = Instant::now();
    let mut n = 0u32;
    while n < 10 || start.elapsed() < budget {
        f();
        n += 1;
    }
    start.elapsed().as_secs_f64() * 1e6 / f64::from(n)
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument is not supported.
    let budget = Duration::from_millis(if std::env::var_os("MASKER_BENCH_QUICK").is_some() { 200 } else { 1000 });
    println!("statement\tcold_us\tcached_us");
    for (name, text) in STATEMENTS {
        assert!(sql::analyze_uncached(text).is_ok(), "{name} does not parse");
        let cold = mean_micros(budget, || {
            black_box(sql::analyze_uncached(black_box(text))).ok();
        });
        let cached = mean_micros(budget, || {
            black_box(sql::analyze(black_box(text)));
        });
        println!("{name}\t{cold:.1}\t{cached:.2}");
    }
}
