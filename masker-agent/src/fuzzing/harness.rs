//! What the entry points run the session code in: a session with a policy
//! and no catalog access, peers that send scripted bytes in scripted
//! pieces, one small runtime.

use std::collections::VecDeque;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, UNIX_EPOCH};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::addr::TargetAddr;
use crate::daemon::registry::{SessionGuard, SessionOrigin};
use crate::identity::{Identity, IssuerConfig, JwksSource, Verifier};
use crate::plan::PlanContext;
use crate::policy::Policy;
use crate::session::context::{ContextSettings, Route, Session, SessionContext};
use crate::session::relay::Pump;
use crate::session::startup::{Startup, startup as session_startup};
use crate::session::track::model::Published;
use crate::session::track::{ClientTracker, ExpectQueue, ServerTracker};

/// The issuer and audience [`super::token`] verifies against.
pub const ISSUER: &str = "https://issuer.fuzz";
pub const AUDIENCE: &str = "masker";

/// A P-256 key made for fuzzing only (it signs nothing anywhere else), and
/// the JWKS of its public half.
const FUZZ_KEY: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg8wsJj2SWle8xMgsx
BHRxGzy2ej4ebkB440CCxPdmKqGhRANCAATfIQZmUn42TSUVF3QHdBoClnCceI5w
m30+tyvsEOYMcgbbkvhHjUFNaSUB71McRZbR6oass8MBaOdUo2zL6DUD
-----END PRIVATE KEY-----
";
pub const JWKS: &str = r#"{"keys":[{"kty":"EC","crv":"P-256","kid":"fuzz","use":"sig","alg":"ES256","x":"3yEGZlJ-Nk0lFRd0B3QaApZwnHiOcJt9Prcr7BDmDHI","y":"BtuS-EeNQU1pJQHvUxxFltHqhqyzwwFo51SjbMvoNQM"}]}"#;

/// A token with `header` and `claims` (any text) signed with the fuzzing
/// key (ES256).
pub fn sign(header: &str, claims: &str) -> Option<String> {
    use base64::Engine;
    static KEY: OnceLock<Option<jsonwebtoken::EncodingKey>> = OnceLock::new();
    let key = KEY.get_or_init(|| jsonwebtoken::EncodingKey::from_ec_pem(FUZZ_KEY.as_bytes()).ok()).as_ref()?;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let message = format!("{}.{}", b64.encode(header), b64.encode(claims));
    let signature = jsonwebtoken::crypto::sign(message.as_bytes(), key, jsonwebtoken::Algorithm::ES256).ok()?;
    Some(format!("{message}.{signature}"))
}

/// Largest message the harness relays (keeps a fuzzer's declared lengths
/// from allocating gigabytes).
const MAX_MESSAGE: usize = 1 << 20;

/// The policy sessions run under: rules of every action, guardrails and an
/// approval rule (refused at once: nobody can approve in a harness).
const POLICY: &str = r#"
version = 1
[defaults]
action = "redact"
comment_classification = true
refuse_inference = true
[pseudonymize]
key_env = "MASKER_PSEUDONYM_KEY"
[[rule]]
name = "email"
column_names = ["*email*"]
action = "email"
[[rule]]
name = "token"
columns = ["public.customers.ssn"]
action = "pseudonymize"
[[rule]]
name = "born"
column_names = ["born*"]
action = "generalize"
to = "year"
[[rule]]
name = "public"
columns = ["public.products.*"]
action = "allow"
[[rule]]
name = "ids"
column_names = ["id", "*_id"]
action = "allow"
[[identity]]
name = "fuzz"
read_only = true
deny_classes = ["procedural"]
deny_tables = ["secrets.*"]
deny_functions = ["pg_read_file", "dblink*"]
[[approval]]
name = "deletes"
classes = ["delete"]
timeout = "1s"
"#;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap_or_else(|e| panic!("runtime: {e}"))
    })
}

fn policy() -> Arc<Policy> {
    static POLICY_: OnceLock<Arc<Policy>> = OnceLock::new();
    POLICY_
        .get_or_init(|| {
            let env = |_: &str| Some("fuzzing-pseudonym-key-0123456789".to_string());
            Arc::new(Policy::parse_with_env(POLICY, "fuzz-policy.toml", &env).unwrap_or_else(|e| panic!("{e}")))
        })
        .clone()
}

/// What one relay direction did: its outcome (the error as text) and the
/// bytes it sent on.
#[derive(Debug)]
pub struct Run {
    pub result: Result<(), String>,
    pub out: Vec<u8>,
}

/// One session as [`crate::session::serve`] sets it up for a client with
/// identity `fuzz` and a policy, minus the sockets.
pub struct Harness {
    session: Arc<Session>,
    plan: Arc<PlanContext>,
    queue: ExpectQueue,
    /// The session model the client tracker keeps and the server tracker reads.
    model: Published,
    observe_only: bool,
    _guard: SessionGuard,
}

impl Harness {
    /// A fresh session (`observe_only`: no policy, audit only).
    pub fn new(observe_only: bool) -> Harness {
        let ctx =
            Arc::new(SessionContext::new(ContextSettings { policy: Some(policy()), ..ContextSettings::default() }));
        let destination = TargetAddr::parse("db.internal:5432").unwrap_or_else(|e| panic!("{e}"));
        let origin = SessionOrigin {
            netns: None,
            identity: Some("fuzz".into()),
            verified: None,
            client: SocketAddr::from((Ipv4Addr::LOCALHOST, 40000)),
            destination: Some(destination.clone()),
            cgroup_id: None,
            pid: None,
        };
        let guard = ctx.registry.open(origin);
        let session = Arc::new(Session::new(ctx.clone(), guard.entry.clone()));
        let rules = if observe_only {
            crate::policy::SessionPolicy::allow_all()
        } else {
            policy().for_session("fuzz", None, destination.as_str())
        };
        let plan = Arc::new(PlanContext {
            policy: rules,
            catalog: ctx.catalog.clone(),
            destination,
            database: "shop".into(),
            user: "app".into(),
        });
        Harness {
            session,
            plan,
            queue: ExpectQueue::default(),
            model: Published::default(),
            observe_only,
            _guard: guard,
        }
    }

    fn client_tracker(&self) -> ClientTracker {
        if self.observe_only {
            ClientTracker::new(self.queue.clone(), None, self.session.clone(), self.model.clone()).observe_only()
        } else {
            ClientTracker::new(self.queue.clone(), Some(self.plan.clone()), self.session.clone(), self.model.clone())
        }
    }

    /// Relays `stream` from the client, read in pieces cut by `cut`.
    pub fn client(&self, stream: &[u8], cut: u8) -> Run {
        let mut filter = self.client_tracker();
        relay(stream, cut, &mut filter)
    }

    /// Relays `client` from the client (its output is not looked at), then
    /// `server` from the server, read in pieces cut by `cut`.
    pub fn server(&self, client: &[u8], server: &[u8], cut: u8) -> Run {
        let mut filter = self.client_tracker();
        let _ = relay(client, 0, &mut filter);
        let mut filter =
            ServerTracker::new(self.queue.clone(), self.plan.clone(), self.session.clone(), self.model.clone());
        if self.observe_only {
            filter = filter.observe_only();
        }
        relay(server, cut, &mut filter)
    }
}

fn relay<F: crate::session::relay::Filter>(stream: &[u8], cut: u8, filter: &mut F) -> Run {
    let mut pump = Pump::new(MAX_MESSAGE);
    let mut peer = Scripted::new(stream, cut);
    let mut out = Vec::new();
    let bytes = AtomicU64::new(0);
    let result = runtime().block_on(pump.run(&mut peer, &mut out, filter, &bytes));
    Run { result: result.map_err(|e| e.to_string()), out }
}

/// The pieces `data` is read in: whole when `cut` is 0, else pieces of 1 to
/// `cut` bytes, in a pattern `cut` picks.
pub fn cuts(data: &[u8], cut: u8) -> Vec<&[u8]> {
    if cut == 0 || data.is_empty() {
        return vec![data];
    }
    let mut state = u32::from(cut).wrapping_mul(2_654_435_761) | 1;
    let mut out = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let n = (1 + state as usize % usize::from(cut)).min(rest.len());
        let (head, tail) = rest.split_at(n);
        out.push(head);
        rest = tail;
    }
    out
}

/// A peer that sends scripted pieces, then ends its stream, and keeps what
/// it is sent.
struct Scripted {
    pieces: VecDeque<Vec<u8>>,
    written: Vec<u8>,
}

impl Scripted {
    fn new(data: &[u8], cut: u8) -> Scripted {
        Scripted { pieces: cuts(data, cut).into_iter().map(<[u8]>::to_vec).collect(), written: Vec::new() }
    }
}

impl AsyncRead for Scripted {
    fn poll_read(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(front) = this.pieces.front_mut() {
            let n = front.len().min(buf.remaining());
            buf.put_slice(&front[..n]);
            front.drain(..n);
            if front.is_empty() {
                this.pieces.pop_front();
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Scripted {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.get_mut().written.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// The session's startup exchange with a client that sends `data` in
/// pieces; CancelRequests are refused (no server to forward them to).
/// Returns the StartupMessage it accepted (`Ok(None)` when the client left
/// or was done) and what the client was answered.
pub fn startup(data: &[u8], cut: u8, allow_tls: bool) -> (Result<Option<Vec<u8>>, String>, Vec<u8>) {
    let harness = Harness::new(false);
    let ctx = harness.session.ctx.clone();
    let mut client = Scripted::new(data, cut);
    let mut buf = BytesMut::new();
    let route = Route::Refuse { code: "28000", message: "masker: fuzzing".into(), denial: None };
    let result = runtime().block_on(session_startup(&mut client, &mut buf, allow_tls, &route, &ctx, &harness.session));
    let result = match result {
        Ok(Startup::Packet(len)) => {
            assert!(len <= buf.len(), "accepted a packet of {len} bytes with {} buffered", buf.len());
            // The accepted packet is at the start of the buffer.
            Ok(Some(buf[..len].to_vec()))
        }
        Ok(Startup::Tls | Startup::Done) => Ok(None),
        Err(e) => Err(e.to_string()),
    };
    (result, std::mem::take(&mut client.written))
}

/// Verifies `token` with the agent's [`Verifier`] against an issuer whose
/// JWKS file holds `jwks`; the identity when it is accepted.
pub fn verify_token(token: &str, jwks: &str, now: u64) -> Option<Identity> {
    static FILE: OnceLock<Mutex<(std::path::PathBuf, String)>> = OnceLock::new();
    let file = FILE.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("masker-fuzz-jwks-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        Mutex::new((dir.join("jwks.json"), String::new()))
    });
    let mut file = file.lock().unwrap_or_else(|p| p.into_inner());
    if file.1 != jwks {
        std::fs::write(&file.0, jwks).ok()?;
        file.1 = jwks.to_string();
    }
    let issuer = IssuerConfig {
        issuer: ISSUER.into(),
        audience: AUDIENCE.into(),
        jwks: JwksSource::File(file.0.clone()),
        jwks_cache_secs: 600,
        jwks_min_fetch_interval_secs: 30,
        audit_claims: vec!["sub".into()],
    };
    let verifier = Verifier::new(&[issuer]).ok()?;
    let now = UNIX_EPOCH + Duration::from_secs(now);
    runtime().block_on(verifier.verify(token, "ci-job", now)).ok()
}
