//! The upstream's response-head deadline on the streamed path.
//!
//! pingora reads a response head with a timeout per read only, so an upstream dripping its head a
//! byte at a time is never cut off. A [`HeadDeadline`] starts when the upstream connection is
//! ready; each request body chunk sent pushes it back, so it counts from the request's last byte
//! (`response-head-timeout`). When it passes before the head has arrived, it shuts the connection
//! down: pingora's read fails at once, and the request is answered 504.
//!
//! The shutdown must never reach a socket pingora has closed and the kernel has given to another
//! connection. On pingora's single-threaded worker runtimes (sluice never lets workers steal
//! work) the timer runs on the request's own thread, so it can only run while the request waits,
//! and the request settles its deadline (head arrived, failed, or dropped) in the same step in
//! which pingora drops the connection, with no wait in between: the descriptor is used as it is,
//! no system call added. On any other runtime the deadline keeps a duplicate of the descriptor of
//! its own.
//!
//! The buffered path ([`super::buffered`]) reads the head itself, under a plain timeout.

use std::net::Shutdown;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The head is still awaited.
const WAITING: u8 = 0;
/// The head arrived in time.
const ARRIVED: u8 = 1;
/// The deadline passed first: the connection was shut down.
const EXPIRED: u8 = 2;
/// The request is over (or on another connection): the descriptor may be closed or reused.
const SETTLED: u8 = 3;

/// One request's deadline on its upstream's response head.
pub struct HeadDeadline {
    shared: Arc<Shared>,
    timer: tokio::task::JoinHandle<()>,
}

struct Shared {
    state: AtomicU8,
    /// What [`Shared::due`] counts from.
    base: Instant,
    /// When the deadline passes, in nanoseconds after `base`.
    due: AtomicU64,
    limit: Duration,
}

impl Shared {
    fn due(&self) -> Instant {
        self.base + Duration::from_nanos(self.due.load(Ordering::Relaxed))
    }

    fn push_back(&self) {
        let due = (self.base.elapsed() + self.limit).as_nanos();
        self.due
            .store(u64::try_from(due).unwrap_or(u64::MAX), Ordering::Relaxed);
    }
}

impl HeadDeadline {
    /// Starts `limit` on the response head of the HTTP/1 connection `fd`, which pingora is about
    /// to send the request on. `None` when the descriptor cannot be duplicated (out of
    /// descriptors): the request goes on under its per-read timeout only.
    pub fn start(fd: RawFd, limit: Duration) -> Option<HeadDeadline> {
        use tokio::runtime::{Handle, RuntimeFlavor};
        let socket = match Handle::current().runtime_flavor() {
            RuntimeFlavor::CurrentThread => Socket::Request(fd),
            // SAFETY: pingora passes the descriptor of the connection it is about to use, open for
            // the length of this call; the duplicate is independent of it.
            #[allow(unsafe_code)]
            _ => Socket::Own(unsafe { BorrowedFd::borrow_raw(fd) }.try_clone_to_owned().ok()?),
        };
        let shared = Arc::new(Shared {
            state: AtomicU8::new(WAITING),
            base: Instant::now(),
            due: AtomicU64::new(0),
            limit,
        });
        shared.push_back();
        let timer = tokio::spawn(watch(shared.clone(), socket));
        Some(HeadDeadline { shared, timer })
    }

    /// More of the request's body went out: the deadline counts from now.
    pub fn push_back(&self) {
        self.shared.push_back();
    }

    /// The response head arrived: the deadline no longer applies (unless it already fired).
    pub fn arrived(&self) {
        let _ = self
            .shared
            .state
            .compare_exchange(WAITING, ARRIVED, Ordering::AcqRel, Ordering::Acquire);
        self.timer.abort();
    }

    /// The deadline passed before the head arrived, and cut the connection off.
    pub fn expired(&self) -> bool {
        self.shared.state.load(Ordering::Acquire) == EXPIRED
    }

    /// The deadline, for messages.
    pub fn limit(&self) -> Duration {
        self.shared.limit
    }
}

impl Drop for HeadDeadline {
    fn drop(&mut self) {
        self.shared.state.store(SETTLED, Ordering::Release);
        self.timer.abort();
    }
}

/// The connection, as the timer reaches it.
enum Socket {
    /// The request's own descriptor, on a single-threaded runtime (the module's docs say why that
    /// is sound).
    Request(RawFd),
    /// A duplicate, anywhere else.
    Own(OwnedFd),
}

impl Socket {
    fn shutdown(&self) {
        let fd = match self {
            Socket::Request(fd) => *fd,
            Socket::Own(owned) => owned.as_fd().as_raw_fd(),
        };
        // SAFETY: the descriptor is open: the caller checked the request has not settled (its
        // connection is still pingora's), or it is this deadline's own duplicate. `shutdown` only
        // ends the connection's traffic; closing stays with its owner.
        #[allow(unsafe_code)]
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        let _ = socket2::SockRef::from(&fd).shutdown(Shutdown::Both);
    }
}

/// Sleeps until the deadline (as pushed back meanwhile), then shuts `socket` down unless the head
/// arrived or the request settled first. Dropping it (abort) closes a duplicate.
async fn watch(shared: Arc<Shared>, socket: Socket) {
    loop {
        let due = shared.due();
        tokio::time::sleep_until(due.into()).await;
        if Instant::now() < shared.due() {
            continue; // pushed back while asleep
        }
        if shared
            .state
            .compare_exchange(WAITING, EXPIRED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            socket.shutdown();
        }
        return;
    }
}
