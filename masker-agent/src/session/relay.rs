//! The relay loop of one direction: read, frame, forward.
//!
//! A [`Pump`] reads whatever the peer sent into one buffer, walks the message
//! headers in it and writes the batch on with a single `write_all` once the
//! input is drained. Messages the [`Filter`] does not need to see whole are
//! forwarded as the bytes they arrived as, even when only part of a large one
//! has arrived (memory stays flat however large a row or a COPY chunk is).
//! Only messages the filter rewrites are copied.
//!
//! A message the filter needs whole is charged to the session's memory
//! budget while it is incomplete ([`super::budget`]), and a peer that leaves
//! a message half sent for longer than the partial-message timeout ends the
//! session. Between messages a peer may stay silent as long as it likes.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Buf, BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::budget::{BudgetError, Reservation, SessionBudget};
use super::drain::{Activity, Direction};
use crate::wire::message::Message;
use crate::wire::{self, FrameError, Header};

/// Bytes read per `read` call at most (the buffer grows only for messages a
/// filter needs whole).
const READ_CHUNK: usize = 64 * 1024;

/// Why a relay direction stopped.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("{0}")]
    Frame(#[from] FrameError),
    #[error("connection closed in the middle of a message")]
    Truncated,
    /// The peer sent part of a message, then nothing for this long.
    #[error("sent part of a message, then nothing for {}s", .0.as_secs())]
    Stalled(Duration),
    /// A message the filter needs whole does not fit in memory.
    #[error("{0}")]
    Memory(#[from] BudgetError),
    /// The filter refused to go on; the message is safe to show a client
    /// (no data values in it).
    #[error("{message}")]
    Refused { code: &'static str, message: String },
}

impl RelayError {
    /// A refusal by policy (SQLSTATE 42501); `message` is what the client
    /// is told and holds no data value.
    pub fn refused(message: impl Into<String>) -> RelayError {
        RelayError::Refused { code: "42501", message: message.into() }
    }
}

/// Messages the agent itself sends a peer between the messages it relays
/// (a NoticeResponse that a statement waits for approval). Written by the
/// pump of that direction as soon as it is at a message boundary.
#[derive(Debug, Default)]
pub struct Outbox {
    bytes: std::sync::Mutex<BytesMut>,
    ready: tokio::sync::Notify,
}

impl Outbox {
    /// Queues whole messages `msg` for the peer.
    pub fn push(&self, msg: &[u8]) {
        self.bytes.lock().unwrap_or_else(|p| p.into_inner()).extend_from_slice(msg);
        self.ready.notify_one();
    }

    fn take(&self) -> BytesMut {
        std::mem::take(&mut *self.bytes.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// What a filter does with a whole message.
pub enum Verdict {
    /// Forward the original bytes.
    Forward,
    /// Drop the original; the filter wrote what goes in its place (possibly
    /// nothing) into the output buffer it was given.
    Replaced,
}

/// Looks at the messages of one direction.
pub trait Filter {
    /// Called for each header; `Ok(true)` asks for the whole message in
    /// [`Filter::on_message`], `Ok(false)` lets it stream through unseen.
    /// Also the place to reject a message type the peer may not send.
    fn wants(&mut self, header: Header) -> Result<bool, FrameError>;

    /// A whole message (header included) that [`Filter::wants`] asked for.
    fn on_message(
        &mut self,
        msg: Message<'_>,
        out: &mut BytesMut,
    ) -> impl Future<Output = Result<Verdict, RelayError>> + Send;

    /// [`Filter::on_message`] when the filter can decide at once (most
    /// messages of a session: nothing to look up or wait for), which spares
    /// building and polling the asynchronous call; `None` leaves the
    /// message to `on_message`, with nothing changed.
    fn on_message_now(&mut self, msg: Message<'_>, out: &mut BytesMut) -> Option<Result<Verdict, RelayError>> {
        let _ = (msg, out);
        None
    }

    /// Called once the current batch was written: the input is drained.
    fn on_flush(&mut self) {}
}

/// One direction of a session.
pub struct Pump {
    buf: BytesMut,
    out: BytesMut,
    scratch: BytesMut,
    max_message: usize,
    /// Bytes of a partly forwarded message still to come.
    stream_left: usize,
    /// Bytes still missing from a message the filter wants whole.
    need: usize,
    /// Set while a write is in progress: if the session is torn down then,
    /// the peer has half a message and nothing more may be sent to it.
    mid_write: bool,
    /// Bytes read while the filter was still deciding on a message (it may
    /// wait long: an approval); framed right after it.
    side: BytesMut,
    /// Told when the reader reaches end of stream while the filter is still
    /// deciding (a client that hangs up while its statement waits for an
    /// approval withdraws it).
    hangup: Option<std::sync::Arc<tokio::sync::Notify>>,
    /// Messages of our own for the peer this pump writes to.
    outbox: Option<std::sync::Arc<Outbox>>,
    /// Where a message the filter needs whole is charged while incomplete.
    budget: Option<SessionBudget>,
    /// The charge for the incomplete message at the start of `buf`.
    held: Option<Reservation>,
    /// How long the reader may leave a message half sent.
    partial_timeout: Option<Duration>,
    /// Requests and answers of the session, noted per message.
    activity: Option<(Arc<Activity>, Direction)>,
    /// The tag of the last message relayed (0 before the first).
    last_tag: u8,
}

impl Pump {
    /// A pump that refuses messages longer than `max_message` bytes.
    pub fn new(max_message: usize) -> Self {
        Pump {
            buf: BytesMut::with_capacity(READ_CHUNK),
            out: BytesMut::new(),
            scratch: BytesMut::new(),
            max_message,
            stream_left: 0,
            need: 0,
            mid_write: false,
            side: BytesMut::new(),
            hangup: None,
            outbox: None,
            budget: None,
            held: None,
            partial_timeout: None,
            activity: None,
            last_tag: 0,
        }
    }

    /// Charges messages the filter needs whole to `budget` while they are
    /// incomplete; one that does not fit ends the relay with
    /// [`RelayError::Memory`].
    pub fn with_budget(mut self, budget: SessionBudget) -> Self {
        self.budget = Some(budget);
        self
    }

    /// Ends the relay with [`RelayError::Stalled`] when the reader leaves a
    /// message half sent for `timeout`.
    pub fn with_partial_timeout(mut self, timeout: Duration) -> Self {
        self.partial_timeout = Some(timeout);
        self
    }

    /// Notes each message relayed `direction` in `activity`.
    pub fn with_activity(mut self, activity: Arc<Activity>, direction: Direction) -> Self {
        self.activity = Some((activity, direction));
        self
    }

    /// The tag of the last message relayed (0 before the first).
    pub fn last_tag(&self) -> u8 {
        self.last_tag
    }

    /// Notes a message that is about to be relayed (each message once).
    fn note(&mut self, tag: u8) {
        self.last_tag = tag;
        if let Some((activity, direction)) = &self.activity {
            activity.observe(*direction, tag);
        }
    }

    /// Also writes what is pushed to `outbox`, between relayed messages.
    pub fn with_outbox(mut self, outbox: std::sync::Arc<Outbox>) -> Self {
        self.outbox = Some(outbox);
        self
    }

    /// Notifies `signal` (one permit) if the reader ends while the filter
    /// decides on a message.
    pub fn with_hangup(mut self, signal: std::sync::Arc<tokio::sync::Notify>) -> Self {
        self.hangup = Some(signal);
        self
    }

    /// Starts with bytes already read (e.g. after the startup packet).
    pub fn preload(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Whether the peer we write to is at a message boundary, so that one
    /// more message (an error) can be sent to it.
    pub fn at_boundary(&self) -> bool {
        !self.mid_write && self.stream_left == 0
    }

    /// Relays until the reader reaches end of stream (`Ok`) or an error.
    pub async fn run<R, W, F>(
        &mut self,
        r: &mut R,
        w: &mut W,
        filter: &mut F,
        bytes: &AtomicU64,
    ) -> Result<(), RelayError>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
        F: Filter,
    {
        if !self.buf.is_empty() {
            self.process(r, w, filter, bytes).await?;
        }
        loop {
            // Each read takes at most one chunk, or what completes a message
            // the filter waits for: the buffer never grows past the larger of
            // the two, however fast the peer sends.
            let want = READ_CHUNK.max(self.need);
            if self.buf.capacity() - self.buf.len() < want / 4 || self.buf.capacity() - self.buf.len() < self.need {
                self.buf.reserve(want);
            }
            // Half a message in: the peer must go on within the timeout.
            let stall = self.partial_timeout.filter(|_| !self.buf.is_empty() || self.stream_left > 0);
            let mut room = (&mut self.buf).limit(want);
            let read = async {
                match stall {
                    Some(limit) => match tokio::time::timeout(limit, r.read_buf(&mut room)).await {
                        Ok(n) => Ok(n?),
                        Err(_) => Err(RelayError::Stalled(limit)),
                    },
                    None => Ok(r.read_buf(&mut room).await?),
                }
            };
            let n = match self.outbox.clone() {
                // Our own messages go out only between whole messages.
                Some(outbox) if self.stream_left == 0 => tokio::select! {
                    n = read => n?,
                    () = outbox.ready.notified() => {
                        let own = outbox.take();
                        if !own.is_empty() {
                            self.mid_write = true;
                            w.write_all(&own).await?;
                            self.mid_write = false;
                            bytes.fetch_add(own.len() as u64, Ordering::Relaxed);
                        }
                        continue;
                    }
                },
                _ => read.await?,
            };
            if n == 0 {
                return if self.buf.is_empty() && self.stream_left == 0 { Ok(()) } else { Err(RelayError::Truncated) };
            }
            self.process(r, w, filter, bytes).await?;
        }
    }

    /// Frames what is buffered, lets the filter see what it asked for and
    /// writes the batch. Complete messages before a malformed one are still
    /// written, so the peer gets everything that was valid.
    async fn process<R, W, F>(
        &mut self,
        r: &mut R,
        w: &mut W,
        filter: &mut F,
        bytes: &AtomicU64,
    ) -> Result<(), RelayError>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
        F: Filter,
    {
        let mut pos = 0;
        self.need = 0;
        // Start of the run of original bytes not yet copied to `out`.
        let mut fwd_start = 0;
        // Whether a message was replaced: then `out` is what goes out, even
        // when it is empty (a message replaced by nothing must not go out).
        let mut replaced = false;
        let mut failure = None;
        // Length of a message the filter needs whole that is incomplete.
        let mut partial = 0;

        if self.stream_left > 0 {
            let take = self.stream_left.min(self.buf.len());
            self.stream_left -= take;
            pos = take;
        }
        while pos < self.buf.len() {
            let header = match wire::peek_header(&self.buf[pos..], self.max_message) {
                Ok(Some(h)) => h,
                Ok(None) => break,
                Err(e) => {
                    failure = Some(e.into());
                    break;
                }
            };
            let whole = match filter.wants(header) {
                Ok(w) => w,
                Err(e) => {
                    failure = Some(e.into());
                    break;
                }
            };
            let avail = self.buf.len() - pos;
            if !whole {
                self.note(header.tag);
                if avail >= header.total_len {
                    pos += header.total_len;
                } else {
                    self.stream_left = header.total_len - avail;
                    pos = self.buf.len();
                }
                continue;
            }
            if avail < header.total_len {
                self.need = header.total_len - avail;
                partial = header.total_len;
                break;
            }
            self.note(header.tag);
            let end = pos + header.total_len;
            self.scratch.clear();
            let msg = Message::new(&self.buf[pos..end]);
            let decided = match filter.on_message_now(msg, &mut self.scratch) {
                Some(v) => v,
                None => {
                    // While the filter decides, keep reading (up to a chunk) so
                    // that a peer that hangs up is noticed; what arrives is
                    // framed next.
                    let decide = filter.on_message(msg, &mut self.scratch);
                    tokio::pin!(decide);
                    let side = &mut self.side;
                    let mut ended = false;
                    loop {
                        tokio::select! {
                            biased;
                            v = &mut decide => break v,
                            n = r.read_buf(side), if !ended && side.len() < READ_CHUNK => match n {
                                Ok(0) => {
                                    // End of stream: the next read says so again.
                                    ended = true;
                                    if let Some(h) = &self.hangup {
                                        h.notify_one();
                                    }
                                }
                                Ok(_) => {}
                                Err(e) => break Err(e.into()),
                            },
                        }
                    }
                }
            };
            if !self.side.is_empty() {
                self.buf.extend_from_slice(&self.side);
                self.side.clear();
            }
            match decided {
                Ok(Verdict::Forward) => {}
                Ok(Verdict::Replaced) => {
                    self.out.extend_from_slice(&self.buf[fwd_start..pos]);
                    self.out.extend_from_slice(&self.scratch);
                    fwd_start = end;
                    replaced = true;
                }
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
            pos = end;
        }

        self.mid_write = true;
        if !replaced {
            if pos > 0 {
                w.write_all(&self.buf[..pos]).await?;
                bytes.fetch_add(pos as u64, Ordering::Relaxed);
            }
        } else {
            self.out.extend_from_slice(&self.buf[fwd_start..pos]);
            if !self.out.is_empty() {
                w.write_all(&self.out).await?;
                bytes.fetch_add(self.out.len() as u64, Ordering::Relaxed);
            }
            self.out.clear();
        }
        self.mid_write = false;
        self.buf.advance(pos);
        filter.on_flush();
        if let Some(e) = failure {
            return Err(e);
        }
        self.charge(partial)
    }

    /// Keeps the charge for an incomplete message of `len` bytes at the
    /// start of the buffer (0: none), taking a new one when it changed.
    fn charge(&mut self, len: usize) -> Result<(), RelayError> {
        if self.held.as_ref().map_or(0, Reservation::bytes) == len {
            return Ok(());
        }
        self.held = None;
        if len > 0
            && let Some(budget) = &self.budget
        {
            self.held = Some(budget.reserve(len)?);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BufMut;

    struct Upper;

    impl Filter for Upper {
        fn wants(&mut self, header: Header) -> Result<bool, FrameError> {
            if header.tag == b'!' {
                return Err(FrameError::UnknownTag { tag: b'!' });
            }
            Ok(header.tag == b'Q')
        }

        async fn on_message(&mut self, msg: Message<'_>, out: &mut BytesMut) -> Result<Verdict, RelayError> {
            out.extend(msg.bytes().iter().map(|b| if b.is_ascii_lowercase() { b.to_ascii_uppercase() } else { *b }));
            Ok(Verdict::Replaced)
        }
    }

    fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut m = BytesMut::new();
        m.put_u8(tag);
        m.put_u32(body.len() as u32 + 4);
        m.extend_from_slice(body);
        m.to_vec()
    }

    async fn relay(input: Vec<u8>, chunk: usize, max: usize) -> (Vec<u8>, Result<(), RelayError>) {
        let (mut client, mut relay_in) = tokio::io::duplex(1 << 20);
        let (mut relay_out, mut server) = tokio::io::duplex(1 << 20);
        let writer = tokio::spawn(async move {
            for piece in input.chunks(chunk) {
                client.write_all(piece).await.unwrap();
                tokio::task::yield_now().await;
            }
        });
        let counter = AtomicU64::new(0);
        let mut pump = Pump::new(max);
        let res = tokio::time::timeout(std::time::Duration::from_secs(5), async {
            writer.await.unwrap();
            pump.run(&mut relay_in, &mut relay_out, &mut Upper, &counter).await
        })
        .await
        .unwrap();
        drop(relay_out);
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(counter.load(Ordering::Relaxed), got.len() as u64);
        (got, res)
    }

    #[tokio::test]
    async fn forwards_untouched_and_rewrites_wanted_in_any_chunking() {
        let big = vec![b'x'; 200_000];
        let mut input = msg(b'd', &big);
        input.extend(msg(b'Q', b"select 1\0"));
        input.extend(msg(b'S', b""));
        let mut expected = msg(b'd', &big);
        expected.extend(msg(b'Q', b"SELECT 1\0"));
        expected.extend(msg(b'S', b""));
        for chunk in [1, 3, 7, 4096, 1 << 20] {
            let (got, res) = relay(input.clone(), chunk, 1 << 20).await;
            assert!(res.is_ok(), "chunk {chunk}: {res:?}");
            assert!(got == expected, "chunk {chunk}");
        }
    }

    /// Takes its time over `Q` messages (`forever`: never decides), as a
    /// filter holding a statement for approval does.
    struct Slow {
        forever: bool,
        seen: Vec<Vec<u8>>,
    }

    impl Filter for Slow {
        fn wants(&mut self, header: Header) -> Result<bool, FrameError> {
            Ok(header.tag == b'Q')
        }

        async fn on_message(&mut self, msg: Message<'_>, _out: &mut BytesMut) -> Result<Verdict, RelayError> {
            self.seen.push(msg.bytes().to_vec());
            if self.forever {
                std::future::pending::<()>().await;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            Ok(Verdict::Forward)
        }
    }

    #[tokio::test]
    async fn a_hang_up_while_the_filter_decides_is_signalled() {
        let (mut client, mut relay_in) = tokio::io::duplex(1 << 16);
        let (mut relay_out, _server) = tokio::io::duplex(1 << 16);
        client.write_all(&msg(b'Q', b"delete\0")).await.unwrap();
        let signal = std::sync::Arc::new(tokio::sync::Notify::new());
        let mut filter = Slow { forever: true, seen: Vec::new() };
        let counter = AtomicU64::new(0);
        let mut pump = Pump::new(1 << 16).with_hangup(signal.clone());
        let run = pump.run(&mut relay_in, &mut relay_out, &mut filter, &counter);
        tokio::pin!(run);
        tokio::select! {
            _ = &mut run => panic!("the filter never decides"),
            () = tokio::time::sleep(std::time::Duration::from_millis(50)) => {}
        }
        drop(client);
        tokio::select! {
            _ = &mut run => panic!("the filter never decides"),
            () = signal.notified() => {}
            () = tokio::time::sleep(std::time::Duration::from_secs(5)) => panic!("no hang-up signal"),
        }
    }

    #[tokio::test]
    async fn bytes_read_while_the_filter_decides_follow_in_order() {
        let (mut client, mut relay_in) = tokio::io::duplex(1 << 16);
        let (mut relay_out, mut server) = tokio::io::duplex(1 << 16);
        let first = msg(b'Q', b"one\0");
        let mut rest = msg(b'd', b"data");
        rest.extend(msg(b'Q', b"two\0"));
        let (a, b) = (first.clone(), rest.clone());
        let writer = tokio::spawn(async move {
            client.write_all(&a).await.unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            client.write_all(&b).await.unwrap();
        });
        let mut filter = Slow { forever: false, seen: Vec::new() };
        let counter = AtomicU64::new(0);
        let mut pump = Pump::new(1 << 16);
        let res = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            pump.run(&mut relay_in, &mut relay_out, &mut filter, &counter),
        )
        .await
        .unwrap();
        writer.await.unwrap();
        assert!(res.is_ok(), "{res:?}");
        drop(relay_out);
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, [first.clone(), rest].concat());
        assert_eq!(filter.seen, [first, msg(b'Q', b"two\0")]);
    }

    #[tokio::test]
    async fn own_messages_go_out_between_relayed_ones_only() {
        let (mut peer_in, mut relay_in) = tokio::io::duplex(1 << 16);
        let (mut relay_out, mut peer_out) = tokio::io::duplex(1 << 16);
        let outbox = std::sync::Arc::new(Outbox::default());
        let counter = AtomicU64::new(0);
        let mut pump = Pump::new(1 << 16).with_outbox(outbox.clone());
        let mut filter = Upper;
        let big = msg(b'd', &[b'x'; 1000]);
        let notice = msg(b'N', b"notice\0");
        let driver = async {
            // Half of a large message: our own must wait for its end.
            peer_in.write_all(&big[..500]).await.unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(30)).await;
            outbox.push(&notice);
            tokio::time::sleep(std::time::Duration::from_millis(30)).await;
            peer_in.write_all(&big[500..]).await.unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(30)).await;
            // Idle at a boundary: it goes out at once.
            outbox.push(&notice);
            tokio::time::sleep(std::time::Duration::from_millis(30)).await;
            drop(peer_in);
        };
        let (res, ()) = tokio::time::timeout(std::time::Duration::from_secs(5), async {
            tokio::join!(pump.run(&mut relay_in, &mut relay_out, &mut filter, &counter), driver)
        })
        .await
        .unwrap();
        assert!(res.is_ok(), "{res:?}");
        drop(relay_out);
        let mut got = Vec::new();
        peer_out.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, [big, notice.clone(), notice].concat());
    }

    fn budget(limit: usize, cap: usize) -> (SessionBudget, crate::daemon::registry::SessionGuard) {
        let registry = Arc::new(crate::daemon::registry::Registry::default());
        let guard = registry.open(crate::daemon::registry::SessionOrigin {
            netns: None,
            identity: None,
            verified: None,
            client: "127.0.0.1:1".parse().unwrap(),
            destination: None,
            cgroup_id: None,
            pid: None,
        });
        let budget = Arc::new(super::super::budget::MemoryBudget::new(limit, cap));
        (SessionBudget::new(budget, guard.entry.clone()), guard)
    }

    #[tokio::test]
    async fn a_wanted_message_is_charged_while_incomplete_and_refused_past_the_cap() {
        for (cap, fits) in [(1 << 20, true), (1000, false)] {
            let (account, guard) = budget(1 << 20, cap);
            let (mut client, mut relay_in) = tokio::io::duplex(1 << 16);
            let (mut relay_out, _server) = tokio::io::duplex(1 << 16);
            let query = msg(b'Q', &[b'x'; 5000]);
            client.write_all(&query[..100]).await.unwrap();
            let counter = AtomicU64::new(0);
            let mut pump = Pump::new(1 << 20).with_budget(account);
            let mut filter = Upper;
            let run = pump.run(&mut relay_in, &mut relay_out, &mut filter, &counter);
            tokio::pin!(run);
            let held = &guard.entry.counters.buffered_bytes;
            if fits {
                let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
                while held.load(Ordering::Relaxed) != query.len() as u64 {
                    tokio::select! {
                        _ = &mut run => panic!("ended early"),
                        () = tokio::time::sleep(std::time::Duration::from_millis(5)) => {}
                    }
                    assert!(tokio::time::Instant::now() < deadline, "never charged");
                }
                client.write_all(&query[100..]).await.unwrap();
                drop(client);
                assert!(run.await.is_ok());
                assert_eq!(held.load(Ordering::Relaxed), 0, "given back");
            } else {
                let r = tokio::time::timeout(std::time::Duration::from_secs(5), run).await.unwrap();
                assert!(
                    matches!(r, Err(RelayError::Memory(BudgetError::Session { wanted: 5005, cap: 1000 }))),
                    "{r:?}"
                );
            }
        }
    }

    #[tokio::test]
    async fn half_a_message_then_silence_times_out_but_silence_between_messages_does_not() {
        let (mut client, mut relay_in) = tokio::io::duplex(1 << 16);
        let (mut relay_out, _server) = tokio::io::duplex(1 << 16);
        let counter = AtomicU64::new(0);
        let limit = std::time::Duration::from_millis(50);
        let mut pump = Pump::new(1 << 20).with_partial_timeout(limit);
        client.write_all(&msg(b'S', b"")).await.unwrap();
        let mut filter = Upper;
        let run = pump.run(&mut relay_in, &mut relay_out, &mut filter, &counter);
        tokio::pin!(run);
        tokio::select! {
            r = &mut run => panic!("an idle peer was cut: {r:?}"),
            () = tokio::time::sleep(limit * 4) => {}
        }
        client.write_all(&msg(b'd', &[0; 100])[..20]).await.unwrap();
        let r = tokio::time::timeout(std::time::Duration::from_secs(5), run).await.unwrap();
        assert!(matches!(r, Err(RelayError::Stalled(l)) if l == limit), "{r:?}");
    }

    /// Drops every `d` message (as the server tracker swallows the rows of
    /// a refused COPY or result).
    struct Swallow;

    impl Filter for Swallow {
        fn wants(&mut self, header: Header) -> Result<bool, FrameError> {
            Ok(header.tag == b'd')
        }

        async fn on_message(&mut self, _: Message<'_>, _: &mut BytesMut) -> Result<Verdict, RelayError> {
            Ok(Verdict::Replaced)
        }
    }

    /// Found by the `backend` fuzz target: a read that held only messages
    /// replaced by nothing sent them on as they came (the rows of a refused
    /// COPY reached the client raw whenever they arrived in a read of their
    /// own).
    #[tokio::test]
    async fn messages_replaced_by_nothing_never_go_out() {
        let mut input = msg(b'd', b"alice@example.com\n");
        input.extend(msg(b'd', b"bob@example.org\n"));
        input.extend(msg(b'c', b""));
        for chunk in [1, 5, 23, 1 << 20] {
            let (mut relay_in, mut peer) = tokio::io::duplex(1 << 16);
            let (mut relay_out, mut server) = tokio::io::duplex(1 << 16);
            let input = input.clone();
            let writer = tokio::spawn(async move {
                for piece in input.chunks(chunk) {
                    peer.write_all(piece).await.unwrap();
                    // Each piece is read on its own.
                    tokio::time::sleep(std::time::Duration::from_millis(2)).await;
                }
            });
            let counter = AtomicU64::new(0);
            let mut pump = Pump::new(1 << 16);
            let res = tokio::time::timeout(std::time::Duration::from_secs(5), async {
                let res = pump.run(&mut relay_in, &mut relay_out, &mut Swallow, &counter).await;
                writer.await.unwrap();
                res
            })
            .await
            .unwrap();
            assert!(res.is_ok(), "{res:?}");
            drop(relay_out);
            let mut got = Vec::new();
            server.read_to_end(&mut got).await.unwrap();
            assert_eq!(got, msg(b'c', b""), "chunk {chunk}");
        }
    }

    #[tokio::test]
    async fn valid_prefix_is_written_before_a_malformed_message() {
        let mut input = msg(b'S', b"");
        input.extend(msg(b'!', b""));
        let (got, res) = relay(input, 1 << 20, 1 << 20).await;
        assert_eq!(got, msg(b'S', b""));
        assert!(matches!(res, Err(RelayError::Frame(FrameError::UnknownTag { tag: b'!' }))));
    }

    #[tokio::test]
    async fn oversized_and_truncated() {
        let (_, res) = relay(msg(b'd', &[0; 100]), 1 << 20, 50).await;
        assert!(matches!(res, Err(RelayError::Frame(FrameError::TooLarge { .. }))));
        let mut cut = msg(b'd', &[0; 100]);
        cut.truncate(50);
        let (got, res) = relay(cut, 1 << 20, 1 << 20).await;
        assert_eq!(got.len(), 50, "a streamed partial message is forwarded as it comes");
        assert!(matches!(res, Err(RelayError::Truncated)));
    }
}
