//! `xtask soak-client PHASE`: the load of `cargo xtask soak`, run by the
//! driver under `masker run` so that every connection it opens to the
//! server's own address goes through the eBPF redirect.
//!
//! It talks to the driver over stdio: progress on stderr, `HOLD <what>` on
//! stdout when it holds connections for a measurement (the driver answers
//! with a line on stdin to let go), and one JSON line of results at the
//! end.

use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Options of the hidden `xtask soak-client` command.
#[derive(clap::Args)]
pub struct Options {
    #[command(subcommand)]
    pub phase: Phase,
    /// The server's own address (redirected to the agent).
    #[arg(long, global = true, default_value = "127.0.0.1:5432")]
    pub addr: SocketAddr,
}

#[derive(clap::Subcommand)]
pub enum Phase {
    /// BURSTS bursts of SESSIONS concurrent sessions (connect, one masked
    /// read, close); holds after each burst for the driver's measurement.
    Bursts {
        #[arg(long)]
        sessions: usize,
        #[arg(long)]
        bursts: usize,
    },
    /// CONNS silent TCP connections (no startup packet), held.
    Idle {
        #[arg(long)]
        conns: usize,
    },
    /// CLIENTS logged-in sessions that each announce a Query of ANNOUNCE
    /// MiB and send SEND MiB of it, held.
    Stalled {
        #[arg(long)]
        clients: usize,
        #[arg(long)]
        announce_mib: usize,
        #[arg(long)]
        send_mib: usize,
    },
    /// SESSIONS concurrent sessions running the mixed workload for SECS.
    Mixed {
        #[arg(long)]
        sessions: usize,
        #[arg(long)]
        secs: u64,
    },
}

pub fn run(opts: &Options) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let result = rt.block_on(async {
        match &opts.phase {
            Phase::Bursts { sessions, bursts } => bursts_phase(opts.addr, *sessions, *bursts).await,
            Phase::Idle { conns } => idle_phase(opts.addr, *conns).await,
            Phase::Stalled { clients, announce_mib, send_mib } => {
                stalled_phase(opts.addr, *clients, *announce_mib, *send_mib).await
            }
            Phase::Mixed { sessions, secs } => mixed_phase(opts.addr, *sessions, Duration::from_secs(*secs)).await,
        }
    })?;
    println!("RESULT {result}");
    std::io::stdout().flush()?;
    Ok(())
}

/// Tells the driver what is held and waits for its go-ahead.
fn hold(what: &str) -> Result<()> {
    println!("HOLD {what}");
    std::io::stdout().flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).context("waiting for the driver")?;
    Ok(())
}

fn config(addr: SocketAddr) -> tokio_postgres::Config {
    let mut c = tokio_postgres::Config::new();
    c.host(addr.ip().to_string()).port(addr.port()).user("postgres").dbname("postgres");
    c.connect_timeout(Duration::from_secs(60));
    c
}

async fn connect(addr: SocketAddr) -> Result<tokio_postgres::Client> {
    let (client, conn) = config(addr).connect(tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// The email of row `id` as the fixture wrote it (what must never arrive).
fn raw_email(id: i32) -> String {
    format!("person{id}@example.com")
}

async fn masked_read(client: &tokio_postgres::Client, id: i32) -> Result<()> {
    let row = client.query_one("SELECT id, full_name, email, phone FROM soak_people WHERE id = $1", &[&id]).await?;
    let email: String = row.get(2);
    if email == raw_email(id) {
        bail!("row {id}: the email arrived unmasked");
    }
    Ok(())
}

async fn bursts_phase(addr: SocketAddr, sessions: usize, bursts: usize) -> Result<Value> {
    let mut errors = 0u64;
    let mut first_error = None;
    let mut secs = Vec::new();
    for b in 0..bursts {
        let started = Instant::now();
        let tasks: Vec<_> = (0..sessions)
            .map(|i| {
                tokio::spawn(async move {
                    let client = connect(addr).await?;
                    masked_read(&client, (i % 10_000) as i32 + 1).await
                })
            })
            .collect();
        for t in tasks {
            if let Err(e) = t.await.context("task")? {
                errors += 1;
                first_error.get_or_insert_with(|| format!("{e:#}"));
            }
        }
        secs.push(started.elapsed().as_secs_f64());
        eprintln!(
            "soak-client: burst {} of {bursts}: {sessions} sessions in {:.1} s",
            b + 1,
            started.elapsed().as_secs_f64()
        );
        hold(&format!("burst {}", b + 1))?;
    }
    Ok(json!({ "errors": errors, "first_error": first_error, "burst_secs": secs }))
}

async fn idle_phase(addr: SocketAddr, conns: usize) -> Result<Value> {
    let mut held = Vec::with_capacity(conns);
    let mut failed = 0u64;
    let started = Instant::now();
    for _ in 0..conns {
        match tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(addr)).await {
            Ok(Ok(s)) => held.push(s),
            _ => failed += 1,
        }
    }
    eprintln!(
        "soak-client: {} silent connections open ({failed} failed) in {:.1} s",
        held.len(),
        started.elapsed().as_secs_f64()
    );
    hold(&format!("{} silent connections", held.len()))?;
    let open = held.len();
    drop(held);
    Ok(json!({ "open": open, "failed": failed }))
}

/// A StartupMessage for `postgres` in `postgres` (the soak cluster trusts).
fn startup_packet() -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&196_608u32.to_be_bytes());
    for s in ["user", "postgres", "database", "postgres", "application_name", "soak-stalled"] {
        body.extend_from_slice(s.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut out = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    out.extend(body);
    out
}

/// Reads messages until ReadyForQuery; the SQLSTATE of an error, if any.
async fn until_ready(s: &mut TcpStream) -> Result<Option<String>> {
    loop {
        let tag = s.read_u8().await?;
        let len = s.read_u32().await? as usize;
        let mut body = vec![0; len.saturating_sub(4)];
        s.read_exact(&mut body).await?;
        match tag {
            b'Z' => return Ok(None),
            b'E' => return Ok(Some(sqlstate(&body))),
            _ => {}
        }
    }
}

fn sqlstate(body: &[u8]) -> String {
    body.split(|b| *b == 0)
        .find_map(|f| f.strip_prefix(b"C"))
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .unwrap_or_default()
}

async fn stalled_phase(addr: SocketAddr, clients: usize, announce_mib: usize, send_mib: usize) -> Result<Value> {
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            tokio::spawn(async move {
                let mut s = TcpStream::connect(addr).await?;
                s.write_all(&startup_packet()).await?;
                if let Some(code) = until_ready(&mut s).await? {
                    bail!("login failed: {code}");
                }
                let mut q = vec![b'Q'];
                q.extend_from_slice(&((announce_mib << 20) as u32).to_be_bytes());
                q.extend_from_slice(b"SELECT '");
                let chunk = vec![b'x'; 1 << 20];
                let sent = async {
                    s.write_all(&q).await?;
                    for _ in 0..send_mib {
                        s.write_all(&chunk).await?;
                    }
                    anyhow::Ok(())
                };
                match tokio::time::timeout(Duration::from_secs(60), sent).await {
                    Ok(Ok(())) => {}
                    // Refused: the agent answered and closed while we sent.
                    Ok(Err(_)) => {}
                    Err(_) => bail!("sending did not finish within 60 s"),
                }
                // Refused sessions have an ErrorResponse waiting; held ones
                // say nothing.
                let refused = match tokio::time::timeout(Duration::from_millis(500), until_ready(&mut s)).await {
                    Ok(Ok(Some(code))) => Some(code),
                    Ok(Err(_)) => Some("closed".to_string()),
                    _ => None,
                };
                anyhow::Ok((s, refused))
            })
        })
        .collect();
    let mut held = Vec::new();
    let mut refused = Vec::new();
    let mut errors = Vec::new();
    for t in tasks {
        match t.await? {
            Ok((s, None)) => held.push(s),
            Ok((_, Some(code))) => refused.push(code),
            Err(e) => errors.push(format!("{e:#}")),
        }
    }
    eprintln!("soak-client: {} stalled sessions held, {} refused", held.len(), refused.len());
    hold(&format!("{} stalled sessions", held.len()))?;
    Ok(json!({ "held": held.len(), "refused": refused, "errors": errors }))
}

/// Latencies of one kind of operation, microseconds.
#[derive(Default)]
struct Samples(Vec<u32>);

impl Samples {
    fn percentile(&mut self, p: f64) -> Option<f64> {
        if self.0.is_empty() {
            return None;
        }
        self.0.sort_unstable();
        let i = ((self.0.len() - 1) as f64 * p).round() as usize;
        Some(f64::from(self.0[i]) / 1000.0)
    }
}

const KINDS: [&str; 4] = ["masked_read", "bulk_read", "refused_write", "reconnect"];

/// The operation kinds of the mixed workload, as its result names them.
pub const KINDS_FOR_REPORT: [&str; 4] = KINDS;

async fn mixed_phase(addr: SocketAddr, sessions: usize, secs: Duration) -> Result<Value> {
    let deadline = Instant::now() + secs;
    let errors = Arc::new(AtomicU64::new(0));
    let first_error = Arc::new(std::sync::Mutex::new(None::<String>));
    let tasks: Vec<_> = (0..sessions)
        .map(|i| {
            let (errors, first_error) = (errors.clone(), first_error.clone());
            tokio::spawn(async move {
                let mut samples: Vec<Samples> = (0..KINDS.len()).map(|_| Samples::default()).collect();
                let fail = |e: anyhow::Error| {
                    errors.fetch_add(1, Ordering::Relaxed);
                    first_error.lock().unwrap().get_or_insert_with(|| format!("{e:#}"));
                };
                // Stagger the start so connects are spread over a few seconds.
                tokio::time::sleep(Duration::from_millis((i % 200) as u64 * 20)).await;
                let mut client = match connect(addr).await {
                    Ok(c) => c,
                    Err(e) => {
                        fail(e);
                        return samples;
                    }
                };
                let mut seed = i as u64 * 2_654_435_761 + 1;
                while Instant::now() < deadline {
                    seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
                    let roll = (seed >> 33) % 100;
                    let id = ((seed >> 13) % 10_000) as i32 + 1;
                    let started = Instant::now();
                    let (kind, outcome) = match roll {
                        0..60 => (0, masked_read(&client, id).await),
                        60..75 => (
                            1,
                            client
                                .query("SELECT id, full_name, email, phone, plan FROM soak_people LIMIT 2000", &[])
                                .await
                                .map_err(anyhow::Error::from)
                                .and_then(|rows| {
                                    let leaked = rows.iter().any(|r| r.get::<_, String>(2) == raw_email(r.get(0)));
                                    if leaked { bail!("bulk read: an email arrived unmasked") } else { Ok(()) }
                                }),
                        ),
                        75..90 => (
                            2,
                            // Literal text: a refused statement with parameters fails in
                            // tokio-postgres itself (the refusal takes none).
                            match client
                                .simple_query(&format!("UPDATE soak_people SET plan = 'x' WHERE id = {id}"))
                                .await
                            {
                                Err(e) if e.code().is_some_and(|c| c.code() == "42501") => Ok(()),
                                Err(e) => Err(e.into()),
                                Ok(_) => Err(anyhow::anyhow!("a write was not refused")),
                            },
                        ),
                        _ => (
                            3,
                            match connect(addr).await {
                                Ok(c) => {
                                    client = c;
                                    Ok(())
                                }
                                Err(e) => Err(e),
                            },
                        ),
                    };
                    samples[kind].0.push(started.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
                    if let Err(e) = outcome {
                        fail(e);
                    }
                }
                samples
            })
        })
        .collect();
    let mut all: Vec<Samples> = (0..KINDS.len()).map(|_| Samples::default()).collect();
    for t in tasks {
        for (k, s) in t.await?.into_iter().enumerate() {
            all[k].0.extend(s.0);
        }
    }
    let mut overall = Samples(all.iter().flat_map(|s| s.0.iter().copied()).collect());
    let mut by_kind = serde_json::Map::new();
    for (k, s) in all.iter_mut().enumerate() {
        by_kind.insert(
            KINDS[k].to_string(),
            json!({ "ops": s.0.len(), "p50_ms": s.percentile(0.5), "p99_ms": s.percentile(0.99) }),
        );
    }
    Ok(json!({
        "sessions": sessions,
        "secs": secs.as_secs(),
        "ops": overall.0.len(),
        "errors": errors.load(Ordering::Relaxed),
        "first_error": first_error.lock().unwrap().clone(),
        "p50_ms": overall.percentile(0.5),
        "p99_ms": overall.percentile(0.99),
        "by_kind": by_kind,
    }))
}
