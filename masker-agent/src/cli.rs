//! The `masker` command line: the daemon, the explicit proxy and the
//! operator commands.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use crate::listener;
use crate::registry::Registry;
use crate::session::{Limits, SessionContext};

/// masker: masks personal data in PostgreSQL results before workloads see it.
#[derive(Debug, Parser)]
#[command(name = "masker", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run as an explicit proxy that clients point at (no eBPF needed).
    ///
    /// Every client connecting to --listen is relayed to --upstream through
    /// the same session and masking path as the transparent agent. Prints
    /// `masker proxy listening on ADDR` on stdout once ready.
    Proxy {
        /// Address to listen on, e.g. 127.0.0.1:6432 (port 0 picks a free one).
        #[arg(long)]
        listen: SocketAddr,
        /// The real PostgreSQL server, HOST:PORT.
        #[arg(long)]
        upstream: String,
    },
}

/// Entry point of the `masker` binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("masker: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(cli));
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("masker: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging() {
    let filter = EnvFilter::try_from_env("MASKER_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Proxy { listen, upstream } => {
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e}"))?;
            let local = listener.local_addr()?;
            let ctx = Arc::new(SessionContext {
                registry: Arc::new(Registry::default()),
                limits: Limits::default(),
                socket_mark: None,
            });
            println!("masker proxy listening on {local}");
            listener::run_proxy(listener, upstream, ctx, shutdown_signal()).await;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
