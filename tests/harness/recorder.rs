//! A TCP relay that records what the server side sends to the client: the
//! raw server-to-client bytes of a session, whatever the client makes of
//! them (a channel the finder scans on its own).
//!
//! One [`Recorder`] per client run: the client connects to [`Recorder::addr`]
//! instead of the target, the recorder connects on to the target and copies
//! both ways on threads. [`Recorder::finish`] waits until every connection
//! has ended and returns what the target sent, in order.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// At most this much is kept per recorder (the rest is relayed, not kept).
const CAP: usize = 256 << 20;

/// A recording relay in front of one target; see the module documentation.
pub struct Recorder {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
    pumps: Arc<Mutex<Vec<JoinHandle<()>>>>,
    recorded: Arc<Mutex<Vec<u8>>>,
    errors: Arc<Mutex<Vec<String>>>,
}

impl Recorder {
    /// Listens on `127.0.0.1:0` and relays every connection to `target`.
    pub fn start(target: SocketAddr) -> Result<Recorder> {
        let listener = TcpListener::bind("127.0.0.1:0").context("binding the recorder")?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let pumps: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let recorded: Arc<Mutex<Vec<u8>>> = Arc::default();
        let errors: Arc<Mutex<Vec<String>>> = Arc::default();
        let accept = {
            let (stop, pumps, recorded, errors) = (stop.clone(), pumps.clone(), recorded.clone(), errors.clone());
            thread::spawn(move || {
                for client in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(client) = client else { continue };
                    let server = match TcpStream::connect_timeout(&target, Duration::from_secs(10)) {
                        Ok(server) => server,
                        Err(e) => {
                            errors.lock().expect("errors").push(format!("recorder: connect to {target}: {e}"));
                            continue;
                        }
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let (Ok(client2), Ok(server2)) = (client.try_clone(), server.try_clone()) else { continue };
                    let mut list = pumps.lock().expect("pumps");
                    list.push(thread::spawn(move || pump(client, server2, None)));
                    let recorded = recorded.clone();
                    list.push(thread::spawn(move || pump(server, client2, Some(recorded))));
                }
            })
        };
        Ok(Recorder { addr, stop, accept: Some(accept), pumps, recorded, errors })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, waits (up to `limit`) until every relayed connection
    /// has ended, and returns the bytes the target sent.
    pub fn finish(mut self, limit: Duration) -> Result<Vec<u8>> {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop up so it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
        let deadline = Instant::now() + limit;
        loop {
            let open = self.pumps.lock().expect("pumps").iter().filter(|p| !p.is_finished()).count();
            if open == 0 {
                break;
            }
            if Instant::now() >= deadline {
                bail!("recorder: {open} relay direction(s) still open after {limit:?} (a client did not hang up)");
            }
            thread::sleep(Duration::from_millis(10));
        }
        for pump in self.pumps.lock().expect("pumps").drain(..) {
            let _ = pump.join();
        }
        if let Some(error) = self.errors.lock().expect("errors").first() {
            bail!("{error}");
        }
        Ok(std::mem::take(&mut *self.recorded.lock().expect("recorded")))
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if self.accept.is_some() {
            let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        }
    }
}

/// Copies `from` to `to` until EOF (recording if asked), then half-closes `to`.
fn pump(mut from: TcpStream, mut to: TcpStream, record: Option<Arc<Mutex<Vec<u8>>>>) {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Some(record) = &record {
            let mut kept = record.lock().expect("recorded");
            if kept.len() < CAP {
                kept.extend_from_slice(&buf[..n]);
            }
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
    let _ = from.shutdown(Shutdown::Read);
}
