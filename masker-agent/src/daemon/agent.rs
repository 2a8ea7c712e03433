//! `masker agent`: the daemon. Loads the policy, attaches the eBPF programs,
//! keeps the target map in step with DNS, accepts redirected connections (on
//! its own listeners and on those it opens inside containers' network
//! namespaces: [`namespaces`]) and answers the admin socket.

mod namespaces;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::net::TcpListener;
use tracing::{error, info, warn};

use super::accept::{self, Router};
use super::admin::{self, Request, Response, Status, TagStatus, TargetStatus};
use super::config::AgentConfig;
use super::registry::SessionOrigin;
use super::reload::ReloadError;
use super::{DaemonError, DaemonSettings, signals};
use crate::addr::TargetAddr;
use crate::interception::cgroup::{CgroupId, Pid};
use crate::interception::netns::NsId;
use crate::interception::{Interception, InterceptionConfig, InterceptionError, NetPort};
use crate::session::context::{ContextSettings, Route, SessionContext};

/// The running agent, shared by the accept loops, the admin socket and the
/// target refresher.
pub struct Agent {
    config: AgentConfig,
    interception: tokio::sync::RwLock<Option<Interception>>,
    ctx: Arc<SessionContext>,
    started: Instant,
    listen: Vec<SocketAddr>,
    targets: std::sync::Mutex<Vec<TargetStatus>>,
    /// Identities with their verified token claims and expiry, by tagged
    /// cgroup id (the BPF tag map holds only the name).
    /// Verified identity of each tagged cgroup (by id), saved under the state
    /// dir on every change so a restarted agent still enforces expiry.
    identities: std::sync::Mutex<crate::identity::Identities>,
    /// Verifies tokens presented at tag time (caches HTTPS key sets).
    verifier: crate::identity::Verifier,
    /// Listeners inside other network namespaces (containers).
    namespaces: namespaces::Namespaces,
    /// Targets given as a network (`172.16.0.0/12:5432`, `*:5432`): their
    /// TLS settings and names apply to every address inside.
    network_targets: std::sync::Mutex<Vec<(NetPort, TargetAddr, Arc<crate::session::tls::TargetTls>)>>,
    /// This agent, for work the admin handler (which has `&self`) starts.
    me: std::sync::OnceLock<std::sync::Weak<Agent>>,
    /// The cgroup v2 mount.
    cgroup_root: PathBuf,
    /// Containers the Docker watcher tagged: id → tagged cgroup, and its
    /// directory when the watcher created it (removed again, if empty, when
    /// the container goes).
    docker_tags: std::sync::Mutex<std::collections::HashMap<String, (CgroupId, Option<PathBuf>)>>,
}

/// Runs the agent until SIGINT/SIGTERM.
pub async fn run(config_path: PathBuf) -> Result<(), DaemonError> {
    let config = AgentConfig::from_file(&config_path)?;
    let credentials = config.load_credentials(&config_path.display().to_string())?;
    let policy = super::load_policy(config.policy.as_deref())?;
    let catalog_access = config.catalog.as_ref().map(|c| c.access()).transpose()?;
    if policy.is_some() && catalog_access.is_none() {
        warn!("no [catalog] credentials configured: every table column will be masked (fail closed)");
    }

    // Listen before attaching: a redirected connection must find someone.
    let v4 = TcpListener::bind(config.listen)
        .await
        .map_err(|source| DaemonError::Listen { addr: config.listen.into(), source })?;
    let mut listeners = vec![v4];
    if let Some(v6) = config.listen_v6 {
        let listener = TcpListener::bind(v6).await;
        listeners.push(listener.map_err(|source| DaemonError::Listen { addr: v6.into(), source })?);
    }
    let listen: Vec<SocketAddr> = listeners.iter().filter_map(|l| l.local_addr().ok()).collect();

    let mut icfg = InterceptionConfig::new(config.listen);
    icfg.listen_v6 = config.listen_v6;
    icfg.pin_dir = config.pin_dir.clone();
    let mut interception = Interception::start(&icfg)?;
    info!(pin_dir = %config.pin_dir.display(), "eBPF programs attached");
    // The programs' own decisions, into our log (debug level).
    let _kernel_log = match interception.take_kernel_log().map(|l| l.forward()) {
        Some(Ok(forwarding)) => Some(forwarding),
        Some(Err(e)) => {
            warn!("kernel-side decisions will not be logged: {e}");
            None
        }
        None => None,
    };
    let namespaces = namespaces::Namespaces::new().map_err(DaemonError::Netns)?;
    let cgroup_root = crate::interception::cgroup::v2_root().map_err(InterceptionError::from)?;

    let mut tls = crate::session::tls::SessionTls::default();
    tls.client = Some(Arc::new(crate::session::tls::ClientTls::new(&config.state_dir)?));
    if !credentials.is_empty() {
        info!(credentials = credentials.len(), "injecting credentials for configured targets");
    }
    let context = ContextSettings {
        policy,
        catalog: catalog_access,
        tls,
        credentials,
        socket_mark: Some(masker_common::MASKER_SOCKET_MARK),
        limits: config.limits.limits()?,
    };
    let audit = config.audit.as_ref().map(|a| a.settings()).unwrap_or_default();
    let ctx = super::start(DaemonSettings { context, audit, metrics_listen: config.metrics_listen }).await?;
    let identities = load_identities_or_none(&config_state_file(&config));
    let verifier = crate::identity::Verifier::new(&config.issuers)?;
    let agent = Arc::new(Agent {
        config,
        interception: tokio::sync::RwLock::new(Some(interception)),
        ctx,
        started: Instant::now(),
        listen: listen.clone(),
        targets: std::sync::Mutex::new(Vec::new()),
        identities: std::sync::Mutex::new(identities),
        verifier,
        namespaces,
        network_targets: std::sync::Mutex::new(Vec::new()),
        me: std::sync::OnceLock::new(),
        cgroup_root,
        docker_tags: std::sync::Mutex::new(Default::default()),
    });
    let _ = agent.me.set(Arc::downgrade(&agent));
    agent.apply_egress().await;
    agent.refresh_targets().await?;
    agent.count_tags().await;
    // Containers already running under tagged cgroups (an agent restart).
    let found = agent.namespaces.reconcile(&agent).await;
    if found.opened > 0 {
        info!(namespaces = found.opened, "serving the network namespaces of running tagged workloads");
    }
    if let Err(e) = namespaces::watch_cgroups(agent.namespaces.watched.clone(), agent.namespaces.wake.clone()) {
        warn!("cannot watch the tagged cgroups ({e}); new containers are found every {:?}", namespaces::RESCAN);
    }
    let rescan = {
        let agent = agent.clone();
        tokio::spawn(async move { agent.namespaces.run(&agent).await })
    };
    let docker = agent.config.docker.clone().map(|d| {
        let agent = agent.clone();
        let root = agent.cgroup_root.clone();
        tokio::spawn(async move {
            let watcher = crate::interception::docker::Watcher { socket: d.socket, label: d.label, root };
            watcher.run(|change| agent.apply_docker(change)).await
        })
    });

    let admin_path = agent.config.admin_socket.clone();
    // Operators decide on held statements over the admin socket.
    agent.ctx.approvals.enable_decisions();
    let admin_task = {
        let agent = agent.clone();
        tokio::spawn(async move {
            if let Err(e) = admin::serve(&admin_path, agent).await {
                error!("admin socket {}: {e}", admin_path.display());
            }
        })
    };
    let refresher = {
        let agent = agent.clone();
        tokio::spawn(async move {
            let every = Duration::from_secs(agent.config.target_refresh_secs.max(1));
            loop {
                tokio::time::sleep(every).await;
                if let Err(e) = agent.refresh_targets().await {
                    warn!("refreshing targets: {e}");
                }
                agent.count_tags().await;
            }
        })
    };
    let hup = {
        let agent = agent.clone();
        signals::on_hangup(move || {
            match agent.reload_policy() {
                Ok(msg) => info!("{msg}"),
                Err(e) => error!("{e}"),
            }
            // The egress locks follow the reloaded policy.
            let agent = agent.clone();
            tokio::spawn(async move { agent.apply_egress().await });
        })
    };
    for l in listeners {
        let (agent, ctx) = (agent.clone(), agent.ctx.clone());
        // Each loop ends (and closes its listener) when the drain begins.
        tokio::spawn(async move { accept::serve(l, agent, ctx.clone(), ctx.shutdown.started()).await });
    }
    println!("masker agent listening on {}", listen.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(", "));
    signals::shutdown_signal().await;
    info!("shutting down");
    // New connections are refused (the listeners close: tagged workloads
    // cannot get around the agent meanwhile); sessions drain.
    super::drain(&agent.ctx).await;
    admin_task.abort();
    refresher.abort();
    rescan.abort();
    if let Some(d) = docker {
        d.abort();
    }
    hup.abort();
    agent.namespaces.close_all(&agent).await;
    let _ = std::fs::remove_file(&agent.config.admin_socket);
    if let Some(i) = agent.interception.write().await.take() {
        match i.shutdown(true) {
            Ok(s) => info!("eBPF: {s:?}"),
            Err(e) => error!("eBPF shutdown: {e}"),
        }
    }
    Ok(())
}

impl Router for Agent {
    /// Where a connection accepted on the agent's own listeners goes.
    async fn route(&self, peer: SocketAddr) -> (SessionOrigin, Route) {
        self.route_from(peer, None).await
    }
}

/// Routes connections accepted on the listener the agent opened inside
/// network namespace `ns` (a container).
pub(super) struct InNamespace {
    agent: Arc<Agent>,
    ns: NsId,
}

impl Router for InNamespace {
    async fn route(&self, peer: SocketAddr) -> (SessionOrigin, Route) {
        match self.agent.namespaces.session_origin(self.ns) {
            Some(netns) => self.agent.route_from(peer, Some(netns)).await,
            // Closed between accept and here: nowhere to connect from.
            None => (
                SessionOrigin {
                    identity: None,
                    verified: None,
                    client: peer,
                    destination: None,
                    cgroup_id: None,
                    pid: None,
                    netns: None,
                },
                refuse("masker: the workload's network namespace is no longer served"),
            ),
        }
    }
}

impl Agent {
    /// Where a connection accepted from `peer` (in namespace `netns`, or the
    /// agent's own) goes: the original destination the kernel recorded, or a
    /// refusal when there is none or its cgroup is no longer tagged (fail
    /// closed).
    async fn route_from(
        &self,
        peer: SocketAddr,
        netns: Option<crate::interception::netns::NetnsOrigin>,
    ) -> (SessionOrigin, Route) {
        let cookie = netns.as_ref().map(|n| n.cookie);
        let mut origin = SessionOrigin {
            identity: None,
            verified: None,
            client: peer,
            destination: None,
            cgroup_id: None,
            pid: None,
            netns,
        };
        let guard = self.interception.read().await;
        let Some(interception) = guard.as_ref() else {
            return (origin, refuse("masker: the agent is shutting down"));
        };
        let cookie = cookie.unwrap_or_else(|| interception.own_netns());
        match interception.original_destination(peer, cookie).await {
            Ok(r) => {
                self.note_network_target(r.original);
                let original = TargetAddr::from(r.original);
                origin.destination = Some(original.clone());
                origin.cgroup_id = Some(r.cgroup);
                origin.pid = Some(Pid(r.pid));
                if r.revoked
                    && let Some(identity) = r.identity.clone()
                {
                    // Removed, not deleted: refused with a clear error,
                    // never relayed, never let through.
                    self.ctx.metrics.revoked_refusal(r.tagged_cgroup.0, &identity);
                    let msg = revoked_message(&identity, r.tagged_cgroup, Pid(r.pid), &original);
                    origin.identity = Some(identity);
                    return (origin, deny(&msg, "revoked"));
                }
                let record = self
                    .identities
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(&r.tagged_cgroup)
                    .map(|id| (Arc::new(id.clone()), id.expired_at(SystemTime::now()).then(|| id.expiry_text())));
                let Some((record, expired)) = record else {
                    // Tagged, but this agent holds no verified identity for
                    // the tag (its state was lost): refuse, never assume.
                    let msg = format!(
                        "masker: the tag of cgroup {} has no identity record in the agent's state; connection \
                         from pid {} to {} refused (tag the cgroup again)",
                        r.tagged_cgroup, r.pid, original
                    );
                    return (origin, refuse(&msg));
                };
                if let Some(at) = expired {
                    let msg = format!(
                        "masker: identity {:?} expired at {at}; connection from pid {} to {} refused",
                        record.name, r.pid, original
                    );
                    return (origin, refuse(&msg));
                }
                match r.identity {
                    Some(identity) => {
                        // The record's claims go with the session only if it
                        // is the record of this very tag.
                        origin.verified = (record.name == identity).then_some(record);
                        origin.identity = Some(identity);
                        (origin, Route::To(original))
                    }
                    None => {
                        let msg = format!(
                            "masker: the cgroup of pid {} is no longer tagged (its tag was deleted); connection to \
                             {} refused",
                            r.pid, original
                        );
                        (origin, refuse(&msg))
                    }
                }
            }
            Err(e) => {
                warn!(client = %peer, "{e}");
                (origin, refuse("masker: cannot identify the connecting workload; connection refused"))
            }
        }
    }
}

impl Agent {
    /// A destination inside a network target gets that target's TLS
    /// settings and name (for credentials and per-identity `targets`), as a
    /// resolved address of a named target has them.
    fn note_network_target(&self, dest: SocketAddr) {
        let key = TargetAddr::from(dest);
        if self.ctx.tls.target(&key).is_some()
            || self.ctx.target_names.read().unwrap_or_else(|p| p.into_inner()).contains_key(&key)
        {
            return;
        }
        let nets = self.network_targets.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, name, tls)) = nets.iter().find(|(n, _, _)| n.contains(dest)) {
            self.ctx.tls.targets.write().unwrap_or_else(|p| p.into_inner()).insert(key.clone(), tls.clone());
            self.ctx.target_names.write().unwrap_or_else(|p| p.into_inner()).insert(key, name.clone());
        }
    }

    /// Resolves the configured targets and replaces the target map.
    async fn refresh_targets(&self) -> Result<(), DaemonError> {
        let mut addrs = Vec::new();
        let mut status = Vec::new();
        let mut tls = Vec::new();
        let mut names = Vec::new();
        let mut nets = Vec::new();
        for t in &self.config.targets {
            if NetPort::looks_like_network(t.as_str()) {
                match NetPort::parse_target(t.as_str()) {
                    Ok(net) => {
                        let settings =
                            Arc::new(crate::session::tls::TargetTls::new(t.as_str(), t.tls, t.ca_file.as_deref())?);
                        nets.push((net, t.address.clone(), settings));
                        status.push(TargetStatus { target: t.address.to_string(), addresses: vec![net.to_string()] });
                    }
                    Err(e) => warn!("target {e}"),
                }
                continue;
            }
            match tokio::net::lookup_host(t.as_str()).await {
                Ok(resolved) => {
                    let resolved: Vec<SocketAddr> = resolved.collect();
                    let host = t.address.host();
                    let settings = Arc::new(crate::session::tls::TargetTls::new(host, t.tls, t.ca_file.as_deref())?);
                    tls.extend(resolved.iter().map(|a| (TargetAddr::from(*a), settings.clone())));
                    names.extend(resolved.iter().map(|a| (TargetAddr::from(*a), t.address.clone())));
                    status.push(TargetStatus {
                        target: t.address.to_string(),
                        addresses: resolved.iter().map(|a| a.to_string()).collect(),
                    });
                    addrs.extend(resolved);
                }
                Err(e) => {
                    // Keep what the name resolved to before rather than
                    // letting its connections bypass masker.
                    warn!(target = %t.address, "cannot resolve: {e}");
                    let old = self.targets.lock().unwrap_or_else(|p| p.into_inner());
                    if let Some(prev) = old.iter().find(|s| s.target == t.address.as_str()) {
                        addrs.extend(prev.addresses.iter().filter_map(|a| a.parse::<SocketAddr>().ok()));
                        status.push(prev.clone());
                    }
                }
            }
        }
        addrs.sort();
        addrs.dedup();
        let specs: Vec<NetPort> =
            addrs.iter().map(|a| NetPort::exact(*a)).chain(nets.iter().map(|(n, _, _)| *n)).collect();
        *self.network_targets.lock().unwrap_or_else(|p| p.into_inner()) = nets;
        if let Some(i) = self.interception.write().await.as_mut() {
            i.set_targets(&specs)?;
        }
        *self.targets.lock().unwrap_or_else(|p| p.into_inner()) = status;
        {
            // Addresses that failed to resolve this time keep their settings.
            let mut map = self.ctx.tls.targets.write().unwrap_or_else(|p| p.into_inner());
            map.extend(tls);
            let mut map = self.ctx.target_names.write().unwrap_or_else(|p| p.into_inner());
            map.extend(names);
        }
        Ok(())
    }

    /// Publishes the size of the tag map (`masker_tagged_cgroups`).
    async fn count_tags(&self) {
        let guard = self.interception.read().await;
        let Some(i) = guard.as_ref() else { return };
        match i.tag_ids() {
            // Revoked tags (untagged, their connections refused) are not
            // tagged workloads any more.
            Ok(tags) => self.ctx.metrics.set_tagged_cgroups(tags.iter().filter(|t| !t.revoked).count()),
            Err(e) => warn!("counting tags: {e}"),
        }
    }

    /// The egress lock the policy gives `identity` (with its verified claims).
    fn egress_of(&self, identity: &crate::identity::Identity) -> Option<crate::interception::EgressLock> {
        let policy = self.ctx.current_policy()?;
        policy.egress_for(&identity.name, identity.verified_claims())
    }

    /// Puts every tag's egress lock in line with the policy in force (after
    /// a start or a reload).
    async fn apply_egress(&self) {
        let wanted: Vec<(CgroupId, Option<crate::interception::EgressLock>)> = {
            let ids = self.identities.lock().unwrap_or_else(|p| p.into_inner());
            ids.iter().map(|(id, identity)| (*id, self.egress_of(identity))).collect()
        };
        let mut guard = self.interception.write().await;
        let Some(i) = guard.as_mut() else { return };
        // Revoked tags keep the lock they had (`set_egress` leaves them).
        let tagged: std::collections::HashSet<CgroupId> =
            i.tag_ids().map(|t| t.into_iter().filter(|t| !t.revoked).map(|t| t.cgroup).collect()).unwrap_or_default();
        for (id, lock) in wanted.into_iter().filter(|(id, _)| tagged.contains(id)) {
            if let Err(e) = i.set_egress(id, lock.as_ref()) {
                error!(cgroup_id = %id, "cannot apply the egress lock: {e}");
            }
        }
    }

    /// Copies the kernel's refusal counters into the metrics.
    async fn refresh_kernel_metrics(&self) {
        let guard = self.interception.read().await;
        let Some(i) = guard.as_ref() else { return };
        let (Ok(refusals), Ok(tags)) = (i.refusals(), i.tag_ids()) else { return };
        let rows = refusals
            .into_iter()
            .map(|(id, r)| {
                let identity = tags.iter().find(|t| t.cgroup == id).map(|t| t.identity.clone()).unwrap_or_default();
                (id.0, identity, r)
            })
            .collect();
        self.ctx.metrics.set_kernel_refusals(rows);
    }

    /// Applies what the Docker watcher saw.
    async fn apply_docker(&self, change: crate::interception::docker::Change) {
        use crate::interception::docker::Change;
        match change {
            Change::Tag { container, cgroup, identity, create } => {
                let made = create && !cgroup.exists();
                if made && let Err(e) = std::fs::create_dir_all(&cgroup) {
                    warn!(container, cgroup = %cgroup.display(), "docker watcher: cannot create the cgroup: {e}");
                    return;
                }
                let request = Request::Tag { cgroup: cgroup.clone(), identity: identity.clone(), token: None };
                match admin::Handler::handle(self, request).await {
                    Response::Ok(v) => {
                        let id = CgroupId(v["cgroup_id"].as_u64().unwrap_or_default());
                        let mut tags = self.docker_tags.lock().unwrap_or_else(|p| p.into_inner());
                        // A start after our create keeps the record of who made it.
                        let made =
                            made.then(|| cgroup.clone()).or_else(|| tags.get(&container).and_then(|t| t.1.clone()));
                        tags.insert(container.clone(), (id, made));
                        info!(container, cgroup = %cgroup.display(), identity, "docker watcher: container tagged");
                    }
                    Response::Error(e) => warn!(container, "docker watcher: cannot tag: {e}"),
                }
            }
            Change::Untag { container } => {
                let Some((id, made)) = self.docker_tags.lock().unwrap_or_else(|p| p.into_inner()).remove(&container)
                else {
                    return;
                };
                if let Some(dir) = made {
                    // Made at `create` for a container that may never have
                    // run: gone unless something is (still) in it.
                    let _ = std::fs::remove_dir(dir);
                }
                // The container's processes are gone with it: the entry is
                // deleted, not revoked (its cgroup goes away too).
                if let Some(i) = self.interception.write().await.as_mut()
                    && let Err(e) = i.forget(id)
                {
                    warn!(container, "docker watcher: cannot untag: {e}");
                }
                self.ctx.metrics.forget_revoked(id.0);
                {
                    let mut ids = self.identities.lock().unwrap_or_else(|p| p.into_inner());
                    ids.remove(&id);
                    self.save_identities(&ids);
                }
                info!(container, cgroup_id = %id, "docker watcher: container stopped, untagged");
                self.count_tags().await;
                self.reconcile_namespaces().await;
            }
        }
    }

    /// `masker untag`: revokes the tag of `cgroup`, or with `forget` deletes
    /// its entry when no process is left in the cgroup (one that still has
    /// processes is revoked instead: they must not reach the targets around
    /// masker). Either way the identity record goes.
    async fn untag(&self, cgroup: &std::path::Path, forget: bool) -> Result<UntagOutcome, String> {
        use crate::interception::Revoked;
        use crate::interception::cgroup as cg;
        let mut guard = self.interception.write().await;
        let Some(i) = guard.as_mut() else { return Err("the agent is shutting down".into()) };
        let dir = cg::resolve(i.cgroup_root(), cgroup).map_err(|e| e.to_string())?;
        let id = cg::id_of(&dir).map_err(|e| e.to_string())?;
        // Cannot tell whether it is empty: not empty (fail closed).
        let busy = forget && cg::populated(&dir).unwrap_or(true);
        let outcome = if forget && !busy {
            let had = i.forget(id).map_err(|e| e.to_string())?;
            UntagOutcome { cgroup_id: id, outcome: if had { "forgotten" } else { "not_tagged" }, note: None }
        } else {
            let outcome = match i.revoke(id).map_err(|e| e.to_string())? {
                Revoked::Now => "revoked",
                Revoked::Already => "already_revoked",
                Revoked::NotTagged => "not_tagged",
            };
            let note = busy.then(|| {
                format!(
                    "{} still has processes: its tag is revoked (their connections to targets are refused), \
                     not deleted",
                    dir.display()
                )
            });
            UntagOutcome { cgroup_id: id, outcome, note }
        };
        drop(guard);
        if outcome.outcome == "forgotten" {
            self.ctx.metrics.forget_revoked(id.0);
        }
        {
            let mut ids = self.identities.lock().unwrap_or_else(|p| p.into_inner());
            if ids.remove(&id).is_some() {
                self.save_identities(&ids);
            }
        }
        info!(cgroup = %dir.display(), cgroup_id = %id, outcome = outcome.outcome, "untagged");
        // A revoked tag's namespace listeners close (its containers' connects
        // are refused in the kernel from now on).
        self.reconcile_namespaces().await;
        Ok(outcome)
    }

    /// Re-scans the namespaces of tagged workloads now (after a tag change).
    async fn reconcile_namespaces(&self) {
        if let Some(me) = self.me.get().and_then(std::sync::Weak::upgrade) {
            me.namespaces.reconcile(&me).await;
        }
    }

    /// Saves the identities; a failure is logged (the tags in force keep
    /// working; a restarted agent would refuse the ones it cannot read).
    fn save_identities(&self, ids: &crate::identity::Identities) {
        let path = config_state_file(&self.config);
        if let Err(e) = crate::identity::save_identities(&path, ids) {
            error!("cannot save tag identities to {}: {e}", path.display());
        }
    }

    /// Loads the policy file again and re-reads the injected credentials'
    /// passwords (SIGHUP, `masker policy reload`).
    fn reload_policy(&self) -> Result<String, ReloadError> {
        super::reload::reload(&self.ctx, self.config.policy.as_deref())
    }

    async fn status(&self) -> Result<Status, InterceptionError> {
        let guard = self.interception.read().await;
        let (tags, pin_dir, refused, locked) = match guard.as_ref() {
            Some(i) => {
                let tags = i.tags()?;
                let locked: std::collections::HashSet<CgroupId> =
                    tags.iter().filter(|t| i.egress_locked(t.cgroup)).map(|t| t.cgroup).collect();
                (tags, i.pin_dir().display().to_string(), i.refusals()?, locked)
            }
            None => (Vec::new(), String::new(), Default::default(), Default::default()),
        };
        let revoked_refusals: std::collections::HashMap<u64, u64> =
            self.ctx.metrics.revoked_refusals().into_iter().map(|(id, _, n)| (id, n)).collect();
        Ok(Status {
            version: env!("CARGO_PKG_VERSION").to_string(),
            pid: std::process::id(),
            uptime_secs: self.started.elapsed().as_secs(),
            listen: self.listen.iter().map(|a| a.to_string()).collect(),
            programs: PROGRAMS.iter().map(|s| s.to_string()).collect(),
            pin_dir,
            targets: self.targets.lock().unwrap_or_else(|p| p.into_inner()).clone(),
            tags: tags
                .into_iter()
                .map(|t| TagStatus {
                    cgroup_id: t.cgroup,
                    path: t.path.map(|p| p.display().to_string()),
                    identity: t.identity,
                    egress_lock: locked.contains(&t.cgroup),
                    refused: refused.get(&t.cgroup).copied().unwrap_or_default(),
                    revoked: t.revoked,
                    revoked_refusals: revoked_refusals.get(&t.cgroup.0).copied().unwrap_or(0),
                })
                .collect(),
            namespaces: self.namespaces.status(),
            listener_entries: guard.as_ref().and_then(|i| i.listener_cookies().ok()).map_or(0, |c| c.len()),
            policy: self.config.policy.as_ref().map(|p| p.display().to_string()),
            observe: self.ctx.current_policy().map(|p| p.observing()).unwrap_or_default(),
            sessions: self.ctx.registry.snapshot(),
            counters: super::counters(&self.ctx),
            identities: self.ctx.metrics.identities(),
            approvals: self.ctx.approvals.list(),
            memory: super::memory(&self.ctx),
            credentials: self
                .ctx
                .credentials
                .iter()
                .map(|c| crate::daemon::admin::CredentialStatus {
                    target: c.target.to_string(),
                    identity: c.identity_pattern.clone(),
                    user: c.user.clone(),
                    source: c.source.to_string(),
                })
                .collect(),
        })
    }
}

impl Agent {
    /// Delivers an operator's decision on a held statement.
    fn decide(&self, id: u64, decision: crate::approvals::Decision) -> Response {
        let what = match &decision {
            crate::approvals::Decision::Approve { standing: Some(_), .. } => "approved (standing)",
            crate::approvals::Decision::Approve { .. } => "approved",
            crate::approvals::Decision::Deny { .. } => "denied",
        };
        match self.ctx.approvals.decide(id, decision) {
            Ok(p) => {
                info!(approval = id, session = p.session, rule = %p.rule, "statement {what} by an operator");
                json(serde_json::json!({ "approval": id, "decision": what, "session": p.session }))
            }
            Err(e) => Response::Error(e.to_string()),
        }
    }
}

/// What `masker untag` did.
#[derive(Debug, serde::Serialize)]
struct UntagOutcome {
    cgroup_id: CgroupId,
    /// `revoked`, `already_revoked`, `forgotten` (entry deleted) or
    /// `not_tagged`.
    outcome: &'static str,
    /// Why a `forget` was only a revocation.
    #[serde(skip_serializing_if = "Option::is_none")]
    note: Option<String>,
}

/// The programs `Interception::start` attaches, as the kernel lists them.
const PROGRAMS: [&str; 7] = masker_common::program_names::ALL;

/// Where the agent keeps the identities of its tags.
fn config_state_file(config: &AgentConfig) -> PathBuf {
    config.state_dir.join("identities.json")
}

/// The saved identities; an unreadable file is logged and treated as empty,
/// which refuses every existing tag until it is tagged again (fail closed).
fn load_identities_or_none(path: &std::path::Path) -> crate::identity::Identities {
    match crate::identity::load_identities(path) {
        Ok(ids) => ids,
        Err(e) => {
            error!("cannot read {}: {e}; existing tags are refused until they are tagged again", path.display());
            crate::identity::Identities::new()
        }
    }
}

fn refuse(message: &str) -> Route {
    Route::Refuse { code: "28000", message: message.to_string(), denial: None }
}

/// A refusal that is a decision about the workload, audited as a denial
/// under `rule`.
fn deny(message: &str, rule: &'static str) -> Route {
    Route::Refuse { code: "28000", message: message.to_string(), denial: Some(rule) }
}

/// What a workload whose tag was revoked is told: which tag, which process
/// (and its cgroup, when it can still be read), what to do.
fn revoked_message(identity: &str, tagged: CgroupId, pid: Pid, destination: &TargetAddr) -> String {
    let own = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .ok()
        .and_then(|t| crate::interception::cgroup::v2_path_from_proc_cgroup(&t).map(|p| format!(" in cgroup {p}")))
        .unwrap_or_default();
    format!(
        "masker: the tag of cgroup {tagged} (identity {identity:?}) was removed; connection from pid {pid}{own} to \
         {destination} refused (tag the cgroup again to connect through masker)"
    )
}

fn json<T: serde::Serialize>(v: T) -> Response {
    match serde_json::to_value(v) {
        Ok(v) => Response::Ok(v),
        Err(e) => Response::Error(e.to_string()),
    }
}

impl admin::Handler for Agent {
    async fn handle(&self, request: Request) -> Response {
        match request {
            Request::Status => match self.status().await {
                Ok(s) => json(s),
                Err(e) => Response::Error(e.to_string()),
            },
            Request::Tag { cgroup, identity, token } => {
                let verified = match &token {
                    Some(token) => match self.verifier.verify(token, &identity, SystemTime::now()).await {
                        Ok(v) => v,
                        Err(e) => {
                            warn!(cgroup = %cgroup.display(), %identity, "token rejected: {e}");
                            return Response::Error(format!("{e}; {} was not tagged", cgroup.display()));
                        }
                    },
                    None => crate::identity::Identity::named(&identity),
                };
                let egress = self.egress_of(&verified);
                let mut guard = self.interception.write().await;
                let Some(i) = guard.as_mut() else { return Response::Error("the agent is shutting down".into()) };
                let tagged = i.tag(&cgroup, &identity, egress.as_ref());
                drop(guard);
                match tagged {
                    Ok(id) => {
                        let expires_at = verified.expires_at;
                        info!(cgroup = %cgroup.display(), cgroup_id = %id, %identity, expires = %verified.expiry_text(), "tagged");
                        {
                            let mut ids = self.identities.lock().unwrap_or_else(|p| p.into_inner());
                            ids.insert(id, verified);
                            self.save_identities(&ids);
                        }
                        // A revoked tag is replaced: its refusals go with it.
                        self.ctx.metrics.forget_revoked(id.0);
                        self.count_tags().await;
                        // Workloads already running in their own namespaces
                        // get their listener before `masker tag` returns.
                        self.reconcile_namespaces().await;
                        json(
                            serde_json::json!({ "cgroup_id": id, "expires_at": expires_at, "egress_lock": egress.is_some() }),
                        )
                    }
                    Err(e) => Response::Error(e.to_string()),
                }
            }
            Request::Untag { cgroup, forget } => match self.untag(&cgroup, forget).await {
                Ok(outcome) => {
                    self.count_tags().await;
                    json(outcome)
                }
                Err(e) => Response::Error(e),
            },
            Request::Sessions => json(self.ctx.registry.snapshot()),
            Request::KillSession { id } => {
                if super::kill_session(&self.ctx, id) {
                    info!(session = id, "session killed by an operator");
                    json(serde_json::json!({ "killed": id }))
                } else {
                    Response::Error(format!("no live session {id}; `masker sessions` lists them"))
                }
            }
            Request::Approvals => json(self.ctx.approvals.list()),
            Request::Approve { id, approver, for_secs } => {
                let standing = for_secs.map(Duration::from_secs);
                self.decide(id, crate::approvals::Decision::Approve { approver, standing })
            }
            Request::Deny { id, approver, reason } => {
                self.decide(id, crate::approvals::Decision::Deny { approver, reason })
            }
            Request::PolicyReload => {
                let result = self.reload_policy();
                self.apply_egress().await;
                match result {
                    Ok(msg) => json(msg),
                    Err(e) => Response::Error(e.to_string()),
                }
            }
        }
    }
}
