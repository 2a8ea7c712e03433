//! The least a userspace relay can do, as a reference row of `bench cpu`:
//! accept, connect to the server, copy bytes both ways
//! (`tokio::io::copy_bidirectional` on a current-thread runtime), nothing
//! parsed, nothing checked. Whatever CPU per transaction this costs is the
//! floor under any relay on the machine, masker or pgbouncer; masker's own
//! work is what it costs above this row.
//!
//! Run by `bench cpu` as `xtask bare-relay` (built in release) in a process
//! of its own so its CPU time is read from `/proc` like the others'.

use std::io::Write;
use std::net::SocketAddr;

use anyhow::{Context, Result};
use tokio::net::{TcpListener, TcpStream};

/// Options of the hidden `xtask bare-relay` subcommand.
#[derive(clap::Args)]
pub struct Options {
    /// Address to listen on (port 0: a free one, printed on stdout).
    #[arg(long)]
    pub listen: SocketAddr,
    /// The PostgreSQL server.
    #[arg(long)]
    pub upstream: SocketAddr,
}

/// Relays until killed; prints `listening on ADDR` once bound.
pub fn run(opts: &Options) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting a runtime")?;
    rt.block_on(async {
        let listener = TcpListener::bind(opts.listen).await.context("binding the bare relay")?;
        println!("listening on {}", listener.local_addr()?);
        std::io::stdout().flush()?;
        loop {
            let (mut client, _) = listener.accept().await.context("accepting")?;
            let upstream = opts.upstream;
            tokio::spawn(async move {
                let _ = client.set_nodelay(true);
                if let Ok(mut server) = TcpStream::connect(upstream).await {
                    let _ = server.set_nodelay(true);
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                }
            });
        }
    })
}
