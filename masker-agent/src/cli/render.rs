//! Text rendering of the agent's admin replies (`masker status`, `masker
//! sessions`, `masker approvals list`).

use std::fmt::Write;

use crate::daemon::admin::Status;

pub(super) fn approvals(pending: &[crate::approvals::PendingApproval]) -> String {
    let mut o = String::new();
    if pending.is_empty() {
        let _ = writeln!(o, "  (none)");
        return o;
    }
    let _ =
        writeln!(o, "  {:>4}  {:>7}  {:<16} {:<16} {:>9}  STATEMENT", "ID", "SESSION", "IDENTITY", "RULE", "WAITING");
    for p in pending {
        let _ = writeln!(
            o,
            "  {:>4}  {:>7}  {:<16} {:<16} {:>4}/{:<4}  {}",
            p.id,
            p.session,
            p.identity.as_deref().unwrap_or("-"),
            p.rule,
            format!("{}s", p.waiting_secs),
            format!("{}s", p.timeout_secs),
            p.statement
        );
    }
    o
}

pub(super) fn sessions(sessions: &[crate::daemon::registry::SessionSnapshot]) -> String {
    let mut o = String::new();
    if sessions.is_empty() {
        let _ = writeln!(o, "  (none)");
        return o;
    }
    let _ = writeln!(
        o,
        "  {:>4}  {:<16} {:>7}  {:<22} {:<12} {:>6} {:>10} {:>10} {:>8} {:>8}",
        "ID", "IDENTITY", "PID", "DESTINATION", "USER", "AGE", "BYTES IN", "BYTES OUT", "ROWS", "MASKED"
    );
    for x in sessions {
        let mut by_action: Vec<String> = x.masked.iter().map(|(k, n)| format!("{k}={n}")).collect();
        if x.buffered_bytes > 0 {
            by_action.push(format!("(partial message {} bytes)", x.buffered_bytes));
        }
        if x.observe {
            by_action.insert(0, "OBSERVE (relayed unmasked)".into());
        }
        if let Some(c) = &x.container {
            // Docker's ids are 64 hex digits; `docker ps` shows 12.
            by_action.push(format!("container {}", c.get(..12).unwrap_or(c)));
        }
        let _ = writeln!(
            o,
            "  {:>4}  {:<16} {:>7}  {:<22} {:<12} {:>5}s {:>10} {:>10} {:>8} {:>8}  {}",
            x.id,
            x.identity.as_deref().unwrap_or("-"),
            x.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
            x.destination,
            x.user.as_deref().unwrap_or("-"),
            x.age_secs,
            x.bytes_from_client,
            x.bytes_to_client,
            x.rows,
            x.masked_cells,
            by_action.join(" ")
        );
    }
    o
}

pub(super) fn status(s: &Status) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "masker agent {} (pid {}, up {}s)", s.version, s.pid, s.uptime_secs);
    let _ = writeln!(o, "listening:  {}", s.listen.join(", "));
    let _ = writeln!(o, "programs:   {} (pinned under {})", s.programs.join(", "), s.pin_dir);
    let _ = writeln!(o, "policy:     {}", s.policy.as_deref().unwrap_or("none (relay without masking)"));
    if !s.observe.is_empty() {
        let _ = writeln!(
            o,
            "\n!! OBSERVE MODE: sessions of [[identity]] {} are relayed UNMASKED; masking, refusals and approval holds \
             are only recorded (audit events with mode observe, masker_observe_* metrics). Remove `mode = \"observe\"` \
             to enforce.",
            s.observe.join(", ")
        );
    }
    let _ = writeln!(o, "\nTARGETS");
    for t in &s.targets {
        let _ = writeln!(o, "  {:<30} {}", t.target, t.addresses.join(", "));
    }
    let _ = writeln!(o, "\nTAGGED CGROUPS");
    if s.tags.is_empty() {
        let _ = writeln!(o, "  (none)");
    }
    for t in &s.tags {
        let path = t.path.as_deref().unwrap_or("(cgroup removed)");
        let lock = if t.egress_lock { "  egress locked" } else { "" };
        let revoked = if t.revoked {
            format!("  REVOKED (untagged; {} connection(s) refused by the agent)", t.revoked_refusals)
        } else {
            String::new()
        };
        let _ = writeln!(
            o,
            "  {:<20} {:>10}  {}  refused: no listener {}, egress {}{lock}{revoked}",
            t.identity, t.cgroup_id, path, t.refused.no_listener, t.refused.egress
        );
    }
    if !s.namespaces.is_empty() {
        let _ = writeln!(o, "\nCONTAINER NAMESPACES (listeners inside)");
        for n in &s.namespaces {
            let container = n.container.as_deref().map_or("-".to_string(), |c| c.chars().take(12).collect());
            let _ =
                writeln!(o, "  {:<18} {:<12} cgroup {:>10}  {}", n.netns, container, n.cgroup_id, n.listen.join(", "));
        }
    }
    if !s.credentials.is_empty() {
        let _ = writeln!(o, "\nINJECTED CREDENTIALS (the agent logs in; clients send no password)");
        for c in &s.credentials {
            let identity = c.identity.as_deref().unwrap_or("*");
            let _ = writeln!(o, "  {:<30} {:<16} user {:<14} {}", c.target, identity, c.user, c.source);
        }
    }
    let _ = writeln!(o, "\nSESSIONS");
    o.push_str(&sessions(&s.sessions));
    if !s.identities.is_empty() {
        let _ = writeln!(o, "\nIDENTITIES");
        let _ = writeln!(
            o,
            "  {:<20} {:>8} {:>10} {:>8} {:>10} {:>8} {:>8}  MASKED BY ACTION",
            "IDENTITY", "SESSIONS", "STATEMENTS", "ERRORS", "ROWS", "MASKED", "DENIALS"
        );
        for (id, c) in &s.identities {
            let by_action: Vec<String> = c.masked.iter().map(|(k, n)| format!("{k}={n}")).collect();
            let _ = writeln!(
                o,
                "  {:<20} {:>8} {:>10} {:>8} {:>10} {:>8} {:>8}  {}",
                if id.is_empty() { "-" } else { id },
                c.sessions,
                c.statements,
                c.statement_errors,
                c.rows,
                c.masked_cells,
                c.denials,
                by_action.join(" ")
            );
        }
    }
    let observed: Vec<_> =
        s.identities.iter().filter(|(_, c)| c.observe_masked_cells > 0 || c.observe_denials > 0).collect();
    if !observed.is_empty() {
        let _ = writeln!(o, "\nOBSERVE MODE: WHAT ENFORCING WOULD HAVE DONE (nothing was masked or refused)");
        let _ = writeln!(o, "  {:<20} {:>12} {:>12}  WOULD MASK BY ACTION", "IDENTITY", "WOULD MASK", "WOULD REFUSE");
        for (id, c) in observed {
            let by_action: Vec<String> = c.observe_masked.iter().map(|(k, n)| format!("{k}={n}")).collect();
            let _ = writeln!(
                o,
                "  {:<20} {:>12} {:>12}  {}",
                if id.is_empty() { "-" } else { id },
                c.observe_masked_cells,
                c.observe_denials,
                by_action.join(" ")
            );
        }
    }
    let _ = writeln!(o, "\nPENDING APPROVALS");
    o.push_str(&approvals(&s.approvals));
    let c = &s.counters;
    let _ = writeln!(
        o,
        "\nCOUNTERS\n  connections {}  refused {}  protocol errors {}  upstream errors {}  cancels {}\n  rows {}  masked cells {}",
        c.connections,
        c.sessions_refused,
        c.protocol_errors,
        c.upstream_errors,
        c.cancel_requests,
        c.rows,
        c.masked_cells
    );
    let m = &s.memory;
    let mib = |b: u64| b as f64 / f64::from(1 << 20);
    let _ = writeln!(
        o,
        "\nMEMORY\n  partial messages {:.1} of {:.0} MiB (per session at most {:.0} MiB)  sessions refused for memory {}\n  \
         resident {}  open fds {}",
        mib(m.buffered_bytes),
        mib(m.budget_bytes),
        mib(m.session_cap_bytes),
        m.sessions_refused,
        m.rss_bytes.map_or_else(|| "?".to_string(), |b| format!("{:.1} MiB", mib(b))),
        m.open_fds.map_or_else(|| "?".to_string(), |n| n.to_string()),
    );
    o
}
