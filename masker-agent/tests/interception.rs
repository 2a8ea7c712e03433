//! Loads and attaches the real eBPF programs and drives real connections from
//! processes in real cgroups. Needs root, bpffs and cgroup v2: fails otherwise,
//! unless `MASKER_TESTS_ALLOW_SKIP=ebpf` (see `masker_tests::skip`).
//!
//! The programs are attached to a cgroup subtree of the test's own (not the
//! root) and pinned in a test-specific directory, so a running agent and other
//! runs of this test are not disturbed. Everything is removed at the end, also
//! when an assertion fails (drop guards).
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use masker_agent::interception::cgroup;
use masker_agent::interception::netns::{NetnsWorker, NsHandle};
use masker_agent::interception::{
    self, EgressLock, Interception, InterceptionConfig, NetPort, Redirected, RefusedCounts, Revoked, Shutdown,
};
use masker_common::{OrigDst, PeerKey, map_names};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::process::Command;

/// Connects to argv[1]:argv[2], prints `PEER <addr> <port>` from
/// getpeername(), or `ERR <errno>`, then waits for one byte.
const CLIENT: &str = r#"
import socket, sys
host, port = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
s.settimeout(5)
try:
    s.connect((host, port))
except OSError as e:
    print("ERR", e.errno, flush=True)
    sys.exit(0)
peer = s.getpeername()
print("PEER", peer[0], peer[1], flush=True)
s.recv(1)
"#;

/// Removes the test's cgroups and pins however the test ends.
struct Cleanup {
    cgroups: Vec<PathBuf>,
    pin_dir: PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for dir in self.cgroups.iter().rev() {
            if let Err(e) = cgroup::remove(dir) {
                eprintln!("cleanup: {e}");
            }
        }
        if let Err(e) = interception::uninstall(&self.pin_dir) {
            eprintln!("cleanup: {e}");
        }
    }
}

/// Where a client's connection ended up.
#[derive(Debug)]
enum Landed {
    Agent(SocketAddr),
    Direct,
    Refused,
}

struct Client {
    landed: Landed,
    /// `PEER ...` / `ERR ...` line of the client.
    said: String,
    pid: u32,
}

struct Env {
    python: PathBuf,
    agent4: TcpListener,
    agent6: TcpListener,
}

impl Env {
    /// Runs the client in cgroup `cg` against `target` and sees which
    /// listener gets the connection: the agent's or `direct`.
    async fn connect(&self, cg: &Path, target: &str, direct: &TcpListener) -> Client {
        let (host, port) = target.rsplit_once(':').expect("host:port");
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(r#"echo $$ > "$1/cgroup.procs" && exec "$2" -c "$3" "$4" "$5""#)
            .args(["sh".as_ref(), cg.as_os_str(), self.python.as_os_str()])
            .args([CLIENT, host, port])
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn client");
        let pid = child.id().expect("child pid");
        let accepted: Option<(TcpStream, Landed)> = tokio::select! {
            r = self.agent4.accept() => r.ok().map(|(s, peer)| (s, Landed::Agent(peer))),
            r = self.agent6.accept() => r.ok().map(|(s, peer)| (s, Landed::Agent(peer))),
            r = direct.accept() => r.ok().map(|(s, _)| (s, Landed::Direct)),
            status = child.wait() => { status.expect("client exit"); None }
        };
        let landed = match accepted {
            Some((mut stream, landed)) => {
                stream.write_all(b"x").await.expect("release client");
                landed
            }
            None => Landed::Refused,
        };
        let out = tokio::time::timeout(Duration::from_secs(10), child.wait_with_output())
            .await
            .expect("client finishes")
            .expect("client output");
        Client { landed, said: String::from_utf8_lossy(&out.stdout).trim().to_owned(), pid }
    }
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

async fn python() -> PathBuf {
    let out = Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .await
        .unwrap_or_else(|e| panic!("python3 (the client of this test, installed by scripts/setup.sh): {e}"));
    assert!(out.status.success(), "python3 failed: {}", String::from_utf8_lossy(&out.stderr));
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tagged_cgroups_are_redirected_and_untagged_are_not() {
    if !masker_tests::skip::ebpf() {
        return;
    }
    let python = python().await;

    let unique = format!("masker-test-{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed));
    let root = cgroup::v2_root().expect("cgroup v2");
    let base = root.join(&unique);
    let tagged = base.join("tagged");
    let deeper = tagged.join("deeper");
    let plain = base.join("plain");
    let mut cleanup = Cleanup { cgroups: Vec::new(), pin_dir: PathBuf::from("/sys/fs/bpf").join(&unique) };
    for dir in [&base, &tagged, &deeper, &plain] {
        std::fs::create_dir(dir).expect("create test cgroup");
        cleanup.cgroups.push(dir.clone());
    }

    let env = Env {
        python,
        agent4: TcpListener::bind("127.0.0.1:0").await.unwrap(),
        agent6: TcpListener::bind("[::1]:0").await.unwrap(),
    };
    let pg4 = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let pg6 = TcpListener::bind("[::1]:0").await.unwrap();
    let other = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (pg4_addr, pg6_addr) = (pg4.local_addr().unwrap(), pg6.local_addr().unwrap());
    let (SocketAddr::V4(listen_v4), SocketAddr::V6(listen_v6)) =
        (env.agent4.local_addr().unwrap(), env.agent6.local_addr().unwrap())
    else {
        unreachable!()
    };
    let cfg = InterceptionConfig {
        listen_v4,
        listen_v6: Some(listen_v6),
        pin_dir: cleanup.pin_dir.clone(),
        cgroup_root: None,
        attach_cgroup: Some(base.clone()),
    };
    let mut ic = Interception::start(&cfg).expect("start interception");
    ic.set_targets(&[NetPort::exact(pg4_addr), NetPort::exact(pg6_addr)]).unwrap();
    let tagged_id = ic.tag(&tagged, "ci-job-1", None).unwrap();
    assert_eq!(tagged_id, cgroup::id_of(&tagged).unwrap());

    // Tagged cgroup, IPv4 target: at the agent, with the original destination.
    let c = env.connect(&tagged, &pg4_addr.to_string(), &pg4).await;
    let r = expect_redirect(&ic, &c).await;
    assert_eq!(r.original, pg4_addr);
    assert_eq!((r.cgroup, r.tagged_cgroup, r.pid), (tagged_id, tagged_id, c.pid));
    assert_eq!((r.identity.as_deref(), r.revoked), (Some("ci-job-1"), false));
    assert_eq!(c.said, format!("PEER 127.0.0.1 {}", pg4_addr.port()), "getpeername shows the target");
    assert!(ic.original_destination(peer(&c), ic.own_netns()).await.is_err(), "the record is taken once");

    // A descendant cgroup is covered by its ancestor's tag.
    let c = env.connect(&deeper, &pg4_addr.to_string(), &pg4).await;
    let r = expect_redirect(&ic, &c).await;
    assert_eq!((r.cgroup, r.tagged_cgroup), (cgroup::id_of(&deeper).unwrap(), tagged_id));

    // IPv6 target, to the IPv6 listener.
    let c = env.connect(&tagged, &pg6_addr.to_string(), &pg6).await;
    let r = expect_redirect(&ic, &c).await;
    assert_eq!(r.original, pg6_addr);
    assert!(peer(&c).is_ipv6());
    assert_eq!(c.said, format!("PEER ::1 {}", pg6_addr.port()));

    // IPv4-mapped destination from an IPv6 socket: connect6 only, same target entry.
    let mapped = format!("[::ffff:127.0.0.1]:{}", pg4_addr.port());
    let c = env.connect(&tagged, &mapped, &pg4).await;
    let r = expect_redirect(&ic, &c).await;
    assert_eq!(r.original, pg4_addr);
    assert_eq!(c.said, format!("PEER ::ffff:127.0.0.1 {}", pg4_addr.port()));

    // Untagged cgroup, and a tagged one to a non-target: direct.
    let c = env.connect(&plain, &pg4_addr.to_string(), &pg4).await;
    assert!(matches!(c.landed, Landed::Direct), "{:?}", c.landed);
    assert_eq!(c.said, format!("PEER 127.0.0.1 {}", pg4_addr.port()));
    let c = env.connect(&tagged, &other.local_addr().unwrap().to_string(), &other).await;
    assert!(matches!(c.landed, Landed::Direct), "{:?}", c.landed);

    // Every record was taken by the agent (by-peer) or dropped when its
    // socket closed (by-cookie): nothing accumulates.
    for map in [map_names::BY_PEER, map_names::BY_COOKIE] {
        let path = cleanup.pin_dir.join(map);
        let mut left = usize::MAX;
        for _ in 0..50 {
            left = pinned_entries(&path);
            if left == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(left, 0, "entries left in {map}");
    }

    // Agent gone (dropped as in a crash, listener closed): fail closed.
    drop(ic);
    let Env { python, agent4, agent6 } = env;
    drop(agent4);
    let env = Env { python, agent4: TcpListener::bind("127.0.0.1:0").await.unwrap(), agent6 };
    let c = env.connect(&tagged, &pg4_addr.to_string(), &pg4).await;
    assert!(matches!(c.landed, Landed::Refused), "{:?}", c.landed);
    assert_eq!(c.said, format!("ERR {}", libc::ECONNREFUSED));

    // A new agent takes the pins over: tags and targets survived.
    let SocketAddr::V4(listen_v4) = env.agent4.local_addr().unwrap() else { unreachable!() };
    let mut ic = Interception::start(&InterceptionConfig { listen_v4, ..cfg.clone() }).expect("restart");
    let tags = ic.tags().unwrap();
    assert_eq!(tags.len(), 1);
    assert_eq!(
        (tags[0].cgroup, tags[0].path.as_deref(), tags[0].identity.as_str()),
        (tagged_id, Some(tagged.as_path()), "ci-job-1")
    );
    let c = env.connect(&tagged, &pg4_addr.to_string(), &pg4).await;
    assert_eq!(expect_redirect(&ic, &c).await.original, pg4_addr);

    // Revoked (`masker untag`): still sent to the agent, which is told the
    // tag is revoked (and refuses); descendants too. Never direct.
    assert_eq!(ic.revoke(tagged_id).unwrap(), Revoked::Now);
    assert_eq!(ic.revoke(tagged_id).unwrap(), Revoked::Already);
    let c = env.connect(&tagged, &pg4_addr.to_string(), &pg4).await;
    let r = expect_redirect(&ic, &c).await;
    assert_eq!((r.identity.as_deref(), r.revoked, r.tagged_cgroup), (Some("ci-job-1"), true, tagged_id));
    let c = env.connect(&deeper, &pg4_addr.to_string(), &pg4).await;
    assert!(expect_redirect(&ic, &c).await.revoked);
    let tags = ic.tags().unwrap();
    assert_eq!((tags.len(), tags[0].revoked), (1, true), "{tags:?}");
    // An existing cgroup's revoked entry is kept; only a gone one's goes.
    assert!(!ic.forget_if_gone(tagged_id).unwrap());
    let gone = tagged.join("gone");
    std::fs::create_dir(&gone).unwrap();
    let gone_id = ic.tag(&gone, "ci-gone", None).unwrap();
    assert!(!ic.forget_if_gone(gone_id).unwrap(), "an active tag is never deleted as gone");
    assert_eq!(ic.revoke(gone_id).unwrap(), Revoked::Now);
    std::fs::remove_dir(&gone).unwrap();
    assert!(ic.forget_if_gone(gone_id).unwrap());
    assert_eq!(ic.revoke(gone_id).unwrap(), Revoked::NotTagged);
    // Tagged again: served again.
    ic.tag(&tagged, "ci-job-1b", None).unwrap();
    let c = env.connect(&tagged, &pg4_addr.to_string(), &pg4).await;
    let r = expect_redirect(&ic, &c).await;
    assert_eq!((r.identity.as_deref(), r.revoked), (Some("ci-job-1b"), false));
    // Deleted (`forget`): direct again.
    assert!(ic.forget(tagged_id).unwrap());
    let c = env.connect(&tagged, &pg4_addr.to_string(), &pg4).await;
    assert!(matches!(c.landed, Landed::Direct), "{:?}", c.landed);

    // Clean shutdown keeps the pins while something is tagged (a revoked tag
    // counts), not otherwise.
    ic.tag(&tagged, "ci-job-2", None).unwrap();
    assert_eq!(ic.shutdown(true).unwrap(), Shutdown::LeftAttached { tagged: 1 });
    assert!(cleanup.pin_dir.exists());
    let mut ic = Interception::start(&cfg).expect("restart");
    assert_eq!(ic.revoke(ic.cgroup_id(&tagged).unwrap()).unwrap(), Revoked::Now);
    assert_eq!(ic.shutdown(true).unwrap(), Shutdown::LeftAttached { tagged: 1 });
    let mut ic = Interception::start(&cfg).expect("restart");
    assert!(ic.forget(ic.cgroup_id(&tagged).unwrap()).unwrap());
    assert_eq!(ic.shutdown(true).unwrap(), Shutdown::Removed);
    assert!(!cleanup.pin_dir.exists(), "no pins left");
    let c = env.connect(&tagged, &pg4_addr.to_string(), &pg4).await;
    assert!(matches!(c.landed, Landed::Direct), "detached after shutdown: {:?}", c.landed);

    drop(cleanup);
    for dir in [&base, &tagged, &deeper, &plain] {
        assert!(!dir.exists(), "{} removed", dir.display());
    }
}

/// Number of entries in a pinned hash map.
fn pinned_entries(path: &Path) -> usize {
    let data = aya::maps::MapData::from_pin(path).expect("open pinned map");
    let info = data.info().expect("map info");
    let map = aya::maps::Map::LruHashMap(data);
    match info.key_size() {
        8 => aya::maps::HashMap::<_, u64, OrigDst>::try_from(map).unwrap().keys().count(),
        _ => aya::maps::HashMap::<_, PeerKey, OrigDst>::try_from(map).unwrap().keys().count(),
    }
}

fn peer(c: &Client) -> SocketAddr {
    match c.landed {
        Landed::Agent(peer) => peer,
        ref other => panic!("expected the agent to get the connection, got {other:?} ({})", c.said),
    }
}

async fn expect_redirect(ic: &Interception, c: &Client) -> Redirected {
    ic.original_destination(peer(c), ic.own_netns()).await.expect("redirect record")
}

/// Sends one UDP datagram (`sendto`, unconnected) to argv[1]:argv[2]; prints
/// `SENT` or `ERR <errno>`.
const UDP_CLIENT: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
try:
    s.sendto(b"x", (sys.argv[1], int(sys.argv[2])))
    print("SENT", flush=True)
except OSError as e:
    print("ERR", e.errno, flush=True)
"#;

/// Runs `script` with `args` in cgroup `cg` (inside network namespace
/// `netns` when given, entered after joining the cgroup) and returns its
/// first stdout line; the child is released (stdin closed) afterwards.
async fn run_in(python: &Path, cg: &Path, netns: Option<&str>, script: &str, args: &[&str]) -> String {
    let enter = match netns {
        Some(ns) => format!("exec ip netns exec {ns}"),
        None => "exec".to_string(),
    };
    let child = Command::new("sh")
        .arg("-c")
        .arg(format!(r#"echo $$ > "$1/cgroup.procs" && {enter} "$2" -c "$3" "$4" "$5""#))
        .args(["sh".as_ref(), cg.as_os_str(), python.as_os_str()])
        .arg(script)
        .args(args)
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn client");
    let out = tokio::time::timeout(Duration::from_secs(10), child.wait_with_output())
        .await
        .expect("client finishes")
        .expect("client output");
    String::from_utf8_lossy(&out.stdout).lines().next().unwrap_or_default().to_owned()
}

/// A network namespace made with `ip netns add`, loopback up; deleted on drop.
struct TestNetns(String);

impl TestNetns {
    fn new(name: String) -> TestNetns {
        let ok = std::process::Command::new("ip").args(["netns", "add", &name]).status().expect("ip netns add");
        assert!(ok.success(), "ip netns add {name}");
        let ns = TestNetns(name);
        let ok = std::process::Command::new("ip").args(["-n", &ns.0, "link", "set", "lo", "up"]).status().unwrap();
        assert!(ok.success(), "lo up in {}", ns.0);
        ns
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip").args(["netns", "delete", &self.0]).status();
    }
}

/// Network targets, the egress lock (TCP and unconnected UDP, allowlist,
/// counters) and per-namespace listeners, straight against the kernel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn egress_lock_network_targets_and_namespace_listeners() {
    if !masker_tests::skip::ebpf() {
        return;
    }
    let python = python().await;
    let unique = format!("masker-test-{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed));
    let root = cgroup::v2_root().expect("cgroup v2");
    let base = root.join(&unique);
    let locked = base.join("locked");
    let mut cleanup = Cleanup { cgroups: Vec::new(), pin_dir: PathBuf::from("/sys/fs/bpf").join(&unique) };
    for dir in [&base, &locked] {
        std::fs::create_dir(dir).expect("create test cgroup");
        cleanup.cgroups.push(dir.clone());
    }

    // The "database" on 127.0.0.1 and the same one under a second loopback
    // address, plus an allowlisted service on a third.
    let db = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = db.local_addr().unwrap().port();
    let db_other = TcpListener::bind(("127.0.0.2", port)).await.unwrap();
    let allowed = TcpListener::bind("127.0.0.3:0").await.unwrap();
    let agent4 = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let agent6 = TcpListener::bind("[::1]:0").await.unwrap();
    let (SocketAddr::V4(listen_v4), SocketAddr::V6(listen_v6)) =
        (agent4.local_addr().unwrap(), agent6.local_addr().unwrap())
    else {
        unreachable!()
    };
    let cfg = InterceptionConfig {
        listen_v4,
        listen_v6: Some(listen_v6),
        pin_dir: cleanup.pin_dir.clone(),
        cgroup_root: None,
        attach_cgroup: Some(base.clone()),
    };
    let mut ic = Interception::start(&cfg).expect("start interception");
    // A network target: 127.0.0.1/32 on the port, not the resolved address.
    ic.set_targets(&[format!("127.0.0.1/32:{port}").parse().unwrap()]).unwrap();
    let lock =
        EgressLock { allow: vec![format!("127.0.0.3/32:{}", allowed.local_addr().unwrap().port()).parse().unwrap()] };
    let id = ic.tag(&locked, "ci-locked", Some(&lock)).unwrap();
    assert!(ic.egress_locked(id));
    let env = Env { python: python.clone(), agent4, agent6 };

    // The target is redirected, lock or not.
    let c = env.connect(&locked, &format!("127.0.0.1:{port}"), &db).await;
    assert_eq!(expect_redirect(&ic, &c).await.original, db.local_addr().unwrap());
    // The same database under another address: refused in the kernel.
    let c = env.connect(&locked, &format!("127.0.0.2:{port}"), &db_other).await;
    assert!(matches!(c.landed, Landed::Refused), "{:?}", c.landed);
    assert_eq!(c.said, format!("ERR {}", libc::EPERM));
    // The allowlisted destination: direct.
    let c = env.connect(&locked, &allowed.local_addr().unwrap().to_string(), &allowed).await;
    assert!(matches!(c.landed, Landed::Direct), "{:?} {}", c.landed, c.said);
    // Unconnected UDP elsewhere: refused too.
    let udp = run_in(&python, &locked, None, UDP_CLIENT, &["127.0.0.2", &port.to_string()]).await;
    assert_eq!(udp, format!("ERR {}", libc::EPERM));
    let refused = ic.refusals().unwrap();
    assert_eq!(refused.get(&id), Some(&RefusedCounts { no_listener: 0, egress: 2 }), "{refused:?}");

    // Lock lifted: the other address is reachable (it is not a target).
    ic.set_egress(id, None).unwrap();
    assert!(!ic.egress_locked(id));
    let c = env.connect(&locked, &format!("127.0.0.2:{port}"), &db_other).await;
    assert!(matches!(c.landed, Landed::Direct), "{:?} {}", c.landed, c.said);
    let udp = run_in(&python, &locked, None, UDP_CLIENT, &["127.0.0.2", &port.to_string()]).await;
    assert_eq!(udp, "SENT");

    // A workload in its own network namespace: no listener there, refused.
    let ns = TestNetns::new(unique.clone());
    let worker = NetnsWorker::start().expect("namespace thread");
    let handle = std::sync::Arc::new(NsHandle::open_path(&PathBuf::from("/run/netns").join(&unique)).unwrap());
    // The namespace's own "database" on the same port, reachable only there.
    let inside = worker.listen(handle.clone()).await.expect("listener in the namespace");
    let ns_db = TcpListener::from_std(inside.v4).unwrap();
    let ns_port = ns_db.local_addr().unwrap().port();
    ic.set_targets(&[format!("127.0.0.1/32:{port}").parse().unwrap(), format!("*:{ns_port}").parse().unwrap()])
        .unwrap();
    let target = ["127.0.0.1", &ns_port.to_string()];
    let out = run_in(&python, &locked, Some(&unique), CLIENT, &target).await;
    assert_eq!(out, format!("ERR {}", libc::EPERM), "no listener in the namespace: refused, never direct");
    assert_eq!(ic.refusals().unwrap()[&id].no_listener, 1);

    // The agent's listener inside the namespace gets it, with the record.
    let agent_in = worker.listen(handle.clone()).await.expect("agent listener in the namespace");
    assert_eq!(agent_in.cookie, inside.cookie);
    assert_ne!(agent_in.cookie, ic.own_netns());
    let agent_ns = TcpListener::from_std(agent_in.v4).unwrap();
    let SocketAddr::V4(agent_ns_addr) = agent_ns.local_addr().unwrap() else { unreachable!() };
    ic.set_listener(agent_in.cookie, Some(agent_ns_addr), None).unwrap();
    assert!(ic.listener_cookies().unwrap().contains(&agent_in.cookie));
    let child = Command::new("sh")
        .arg("-c")
        .arg(format!(r#"echo $$ > "$1/cgroup.procs" && exec ip netns exec {unique} "$2" -c "$3" "$4" "$5""#))
        .args(["sh".as_ref(), locked.as_os_str(), python.as_os_str()])
        .arg(CLIENT)
        .args(target)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let (mut accepted, peer) = tokio::select! {
        a = agent_ns.accept() => a.unwrap(),
        _ = ns_db.accept() => panic!("the client reached the namespace's database directly"),
        _ = tokio::time::sleep(Duration::from_secs(10)) => panic!("no connection at the agent's listener in the namespace"),
    };
    let r = ic.original_destination(peer, agent_in.cookie).await.expect("record keyed by namespace");
    assert_eq!(
        (r.original, r.tagged_cgroup, r.netns_cookie),
        (format!("127.0.0.1:{ns_port}").parse().unwrap(), id, agent_in.cookie)
    );
    assert!(ic.original_destination(peer, ic.own_netns()).await.is_err(), "not under the host namespace");
    // Upstream from the namespace reaches what only the namespace has.
    let up = worker.upstream_socket(handle.clone(), r.original, Some(masker_common::MASKER_SOCKET_MARK)).await.unwrap();
    let upstream =
        tokio::net::TcpSocket::from_std_stream(up).connect(r.original).await.expect("connect inside the namespace");
    let (_server_side, _) = tokio::time::timeout(Duration::from_secs(5), ns_db.accept()).await.unwrap().unwrap();
    drop(upstream);
    accepted.write_all(b"x").await.unwrap();
    let out = child.wait_with_output().await.unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("PEER 127.0.0.1"), "client saw its target");

    // Listener removed: refused again.
    ic.remove_listener(agent_in.cookie).unwrap();
    let out = run_in(&python, &locked, Some(&unique), CLIENT, &target).await;
    assert_eq!(out, format!("ERR {}", libc::EPERM));
    assert_eq!(ic.refusals().unwrap()[&id].no_listener, 2);

    // Revoked: the lock, its allowlist and the counters stay; a policy
    // reload cannot lift the lock; the target still goes to the agent.
    ic.set_egress(id, Some(&lock)).unwrap();
    assert_eq!(ic.revoke(id).unwrap(), Revoked::Now);
    ic.set_egress(id, None).unwrap();
    assert!(ic.egress_locked(id), "a revoked tag keeps its egress lock");
    let c = env.connect(&locked, &format!("127.0.0.2:{port}"), &db_other).await;
    assert_eq!(c.said, format!("ERR {}", libc::EPERM), "{:?}", c.landed);
    let c = env.connect(&locked, &allowed.local_addr().unwrap().to_string(), &allowed).await;
    assert!(matches!(c.landed, Landed::Direct), "{:?} {}", c.landed, c.said);
    let c = env.connect(&locked, &format!("127.0.0.1:{port}"), &db).await;
    assert!(expect_redirect(&ic, &c).await.revoked);
    assert_eq!(ic.refusals().unwrap()[&id], RefusedCounts { no_listener: 2, egress: 3 });

    // Deleted: allowlist and counters go with the entry.
    assert!(ic.forget(id).unwrap());
    assert!(ic.refusals().unwrap().is_empty());
    let c = env.connect(&locked, &format!("127.0.0.2:{port}"), &db_other).await;
    assert!(matches!(c.landed, Landed::Direct), "{:?} {}", c.landed, c.said);
    drop((agent_ns, ns_db, handle, worker, ns));
    assert_eq!(ic.shutdown(true).unwrap(), Shutdown::Removed);
    drop(cleanup);
}
