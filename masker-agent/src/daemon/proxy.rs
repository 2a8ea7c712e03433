//! `masker proxy`: the session path as an explicit proxy that clients point
//! at (hosts without eBPF privileges, containers, tests). Every client goes
//! to one upstream with one identity.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tracing::{error, info};

use super::accept::{self, FixedUpstream};
use super::{DaemonError, DaemonSettings, signals};
use crate::addr::TargetAddr;
use crate::audit::AuditSettings;
use crate::plan::catalog::CatalogAccess;
use crate::session::auth::{self, Credentials, SecretSource};
use crate::session::context::{ContextSettings, Limits};
use crate::session::tls::{ClientTls, SessionTls, TargetTls, UpstreamTlsMode};

/// What `masker proxy` is started with (its command line).
#[derive(Debug, Clone)]
pub struct ProxyOptions {
    /// Address to listen on (port 0 picks a free one).
    pub listen: SocketAddr,
    /// The real server.
    pub upstream: TargetAddr,
    /// Policy file; without one results are relayed unchanged.
    pub policy: Option<PathBuf>,
    /// Identity the policy sees for every session.
    pub identity: String,
    /// How the proxy logs in for catalog look-ups.
    pub catalog: Option<CatalogAccess>,
    /// Where masker's CA is kept; `None`: no TLS towards clients.
    pub state_dir: Option<PathBuf>,
    /// TLS towards the upstream server.
    pub upstream_tls: UpstreamTlsMode,
    /// CA bundle for `verify-full`.
    pub upstream_ca: Option<PathBuf>,
    /// Audit events go to this file (rotated at 100 MiB, 5 kept).
    pub audit_file: Option<PathBuf>,
    /// Prometheus endpoint address.
    pub metrics_listen: Option<SocketAddr>,
    /// An injected credential: the database user and where its password is.
    pub credential: Option<(String, SecretSource)>,
    /// Timeouts and memory limits.
    pub limits: Limits,
}

/// Runs the proxy until SIGINT/SIGTERM, then drains its sessions (see
/// [`super::drain`]). SIGHUP reloads the policy file and the injected
/// credential's password. Prints `masker proxy listening on ADDR` on stdout
/// once ready.
pub async fn run(opts: ProxyOptions) -> Result<(), DaemonError> {
    let credentials = match &opts.credential {
        None => Credentials::default(),
        Some((user, source)) => {
            let c = auth::load(opts.upstream.as_str(), None, user, source.clone())
                .map_err(|source| DaemonError::Credential { user: user.clone(), source })?;
            Credentials::new(vec![c])
        }
    };
    let mut tls = SessionTls::default();
    if let Some(dir) = &opts.state_dir {
        tls.client = Some(Arc::new(ClientTls::new(dir)?));
    }
    let target = TargetTls::new(opts.upstream.host(), opts.upstream_tls, opts.upstream_ca.as_deref())?;
    tls.set_targets([(opts.upstream.clone(), target)]);
    let policy = super::load_policy(opts.policy.as_deref())?;
    let listen_failed = |source| DaemonError::Listen { addr: opts.listen, source };
    let listener = tokio::net::TcpListener::bind(opts.listen).await.map_err(listen_failed)?;
    let local = listener.local_addr().map_err(listen_failed)?;
    let audit = AuditSettings {
        file: opts.audit_file.clone(),
        max_bytes: AuditSettings::DEFAULT_MAX_BYTES,
        keep: AuditSettings::DEFAULT_KEEP,
        stdout: false,
    };
    let context = ContextSettings {
        policy,
        catalog: opts.catalog.clone(),
        tls,
        credentials,
        socket_mark: None,
        limits: opts.limits.clone(),
    };
    let ctx = super::start(DaemonSettings { context, audit, metrics_listen: opts.metrics_listen }).await?;
    println!("masker proxy listening on {local}");
    let hup = {
        let (ctx, policy) = (ctx.clone(), opts.policy.clone());
        signals::on_hangup(move || match super::reload::reload(&ctx, policy.as_deref()) {
            Ok(msg) => info!("{msg}"),
            Err(e) => error!("{e}"),
        })
    };
    let router = Arc::new(FixedUpstream { upstream: opts.upstream.clone(), identity: opts.identity.clone() });
    // The listener closes when the loop ends: new clients are refused
    // while the sessions drain.
    accept::serve(listener, router, ctx.clone(), signals::shutdown_signal()).await;
    info!("proxy shutting down");
    super::drain(&ctx).await;
    hup.abort();
    Ok(())
}
