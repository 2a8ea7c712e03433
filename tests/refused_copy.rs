//! A `COPY ... TO STDOUT` that masker refuses once the server has started
//! it: the client gets one error and none of the rows, however the server's
//! data is cut into reads, and the session goes on.
//!
//! Found by the `backend` fuzz target: a read that held only rows being
//! swallowed sent them on as they came, so every row of a refused COPY
//! after the first read reached the client raw (95,974 of 100,000 rows in
//! a run by hand before the fix).

use std::time::Duration;

use masker_tests::raw::{self, RawConn};
use masker_tests::{MaskerProxy, PgCluster, within};

const LIMIT: Duration = Duration::from_secs(60);

#[tokio::test]
async fn rows_of_a_refused_copy_never_reach_the_client() {
    if MaskerProxy::bypassed() {
        return;
    }
    let cluster = PgCluster::shared();
    let dir = tempfile::tempdir().expect("temp dir");
    let policy = dir.path().join("policy.toml");
    let rule = "version = 1\n[[rule]]\nname = \"email\"\ncolumn_names = [\"email\"]\naction = \"email\"\n";
    std::fs::write(&policy, rule).expect("writing the policy");
    // A catalog role that cannot log in: the COPY's columns cannot be
    // resolved once the server answers, so masker refuses the COPY then.
    let args: Vec<String> = ["--policy", &policy.to_string_lossy(), "--catalog-user", "masker_no_such_role"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let proxy = MaskerProxy::start_with_args(cluster.addr(), &args).unwrap_or_else(|e| panic!("{e:#}"));
    within(LIMIT, "refused COPY", async {
        let (mut conn, _) = RawConn::login(proxy.addr(), &cluster.app()).await.expect("login through masker");
        conn.send(&raw::query("COPY customers TO STDOUT")).await.expect("send");
        let msgs = conn.read_until_ready().await.expect("answer to the COPY");
        let errors: Vec<_> = msgs.iter().filter(|m| m.tag == b'E').collect();
        let rows = msgs.iter().filter(|m| m.tag == b'd').count();
        assert_eq!(rows, 0, "{rows} rows of a refused COPY reached the client");
        assert_eq!(errors.len(), 1, "one error: {msgs:?}");
        assert_eq!(errors[0].sqlstate().as_deref(), Some("42501"), "{:?}", errors[0].fields());
        // The session goes on.
        conn.send(&raw::query("SELECT 41 + 1")).await.expect("send");
        let msgs = conn.read_until_ready().await.expect("answer to SELECT");
        assert!(msgs.iter().any(|m| m.tag == b'D' && m.body.ends_with(b"42")), "{msgs:?}");
    })
    .await;
}
