//! What a middleware call may spend: the time it runs, not the time its request waits.
//!
//! A call's `timeout` bounds what the middleware does. Measured from the call's start by the wall
//! clock, it would also count the time its worker thread ran other requests between the call's
//! polls (every call yields at each epoch tick), or waited to be scheduled on a busy machine, and a
//! trivial middleware would fail at random under load. So a call has two budgets, each of
//! `timeout`:
//!
//! - **running**: the time of the call's own polls, measured around each poll; the epoch callback
//!   stops the call (a trap, `timeout`) once it is spent. A poll is the call running on its
//!   worker, by the monotonic clock for its first [`CPU_CLOCK_AFTER`] of running and by the
//!   thread's CPU clock after that: a call that runs that long is preempted inside its polls on a
//!   busy machine, and the time the thread was not running is not the middleware's. (The CPU clock
//!   is a system call, 0.7 µs here against 30 ns for the monotonic clock: read twice per poll, it
//!   would cost every short call on every request; past 1 ms of running, polls are a tick long
//!   and the two reads per tick are noise.) A poll timed by the monotonic clock counts at most
//!   [`CPU_CLOCK_AFTER`], however long it was preempted: one that runs guest code ends at the next
//!   epoch tick, so a longer one waited for a CPU (on a saturated machine, or on the idle-priority
//!   quarantine thread, which waits for every worker).
//! - **waiting in the host** (outbound HTTP, the state backend, a WASI clock): the time between a
//!   poll that left the call waiting and the next one, bounded by a timer (`chain::run`).
//!
//! A poll that ends because the epoch callback yielded (to let the worker's other requests run)
//! is not a wait: the call is ready again at once.

use std::sync::LazyLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Monotonic time since the first call, never zero (0 marks "not in a poll").
fn now() -> Duration {
    static START: LazyLock<Instant> = LazyLock::new(Instant::now);
    START.elapsed() + Duration::from_nanos(1)
}

/// Running time after which a call's polls are timed by the thread's CPU clock.
pub const CPU_CLOCK_AFTER: Duration = Duration::from_millis(1);

/// The CPU time this thread has run, in nanoseconds, never zero (0 marks "not timed by it");
/// `None` where the clock cannot be read, and the monotonic clock times the poll.
fn thread_cpu() -> Option<u64> {
    use nix::time::{ClockId, clock_gettime};
    let time = clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID).ok()?;
    let nanos = (time.tv_sec() as u64).saturating_mul(1_000_000_000);
    Some(nanos.saturating_add(time.tv_nsec() as u64).saturating_add(1))
}

/// One call's running budget, shared by the store's epoch callback (inside the call) and the
/// poll wrapper (around it). Every poll of a call happens on one worker thread.
#[derive(Debug, Default)]
pub struct Meter {
    /// The budget, in nanoseconds.
    limit: AtomicU64,
    /// Time spent in the call's finished polls.
    used: AtomicU64,
    /// When the current poll started ([`now`]); 0 between polls and outside calls.
    poll_started: AtomicU64,
    /// The thread's CPU clock when the current poll started ([`thread_cpu`]), once the call has
    /// run for [`CPU_CLOCK_AFTER`]; 0 otherwise.
    poll_cpu_started: AtomicU64,
    /// Set by the epoch callback when it yields: the poll ends with the call ready again.
    yielded: AtomicBool,
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl Meter {
    /// Starts a call that may run for `limit`.
    pub fn arm(&self, limit: Duration) {
        self.limit.store(nanos(limit), Ordering::Relaxed);
        self.used.store(0, Ordering::Relaxed);
        self.yielded.store(false, Ordering::Relaxed);
    }

    /// A poll of the call starts on this thread.
    pub fn enter(&self) {
        self.poll_started.store(nanos(now()), Ordering::Relaxed);
        if self.used.load(Ordering::Relaxed) >= nanos(CPU_CLOCK_AFTER)
            && let Some(cpu) = thread_cpu()
        {
            self.poll_cpu_started.store(cpu, Ordering::Relaxed);
        }
    }

    /// The poll ends: its time is added. True when it ended because the epoch callback
    /// yielded (not because the call waits in the host).
    pub fn leave(&self) -> bool {
        let started = self.poll_started.swap(0, Ordering::Relaxed);
        let cpu_started = self.poll_cpu_started.swap(0, Ordering::Relaxed);
        if started > 0 {
            self.used.fetch_add(self.ran(started, cpu_started), Ordering::Relaxed);
        }
        self.yielded.swap(false, Ordering::Relaxed)
    }

    /// What the poll that started at `started` (and at `cpu_started` on the thread's CPU clock,
    /// if it is timed by it) has run so far. Called on the poll's thread.
    fn ran(&self, started: u64, cpu_started: u64) -> u64 {
        // The CPU clock is read only for a poll that started by it.
        match (cpu_started > 0).then(thread_cpu).flatten() {
            Some(cpu) => cpu.saturating_sub(cpu_started),
            // By the monotonic clock a poll counts at most `CPU_CLOCK_AFTER`: every poll that runs
            // guest code ends at the next epoch tick, so one that took longer was preempted, and
            // the time its thread did not run is not the middleware's. The call has then used
            // `CPU_CLOCK_AFTER`, and its next polls are timed by the CPU clock.
            None => nanos(now()).saturating_sub(started).min(nanos(CPU_CLOCK_AFTER)),
        }
    }

    /// Whether a call is being polled: only then does the running budget apply.
    pub fn polling(&self) -> bool {
        self.poll_started.load(Ordering::Relaxed) > 0
    }

    /// Whether the polled call has spent its running budget (checked on each epoch tick).
    pub fn spent(&self) -> bool {
        let started = self.poll_started.load(Ordering::Relaxed);
        let current = self.ran(started, self.poll_cpu_started.load(Ordering::Relaxed));
        self.used.load(Ordering::Relaxed) + current >= self.limit.load(Ordering::Relaxed)
    }

    /// The epoch callback let the worker run other requests.
    pub fn yielded(&self) {
        self.yielded.store(true, Ordering::Relaxed);
    }

    /// Time the call has run so far, in finished polls.
    pub fn used(&self) -> Duration {
        Duration::from_nanos(self.used.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_time_in_polls_counts() {
        let meter = Meter::default();
        meter.arm(Duration::from_millis(20));
        meter.enter();
        let started = std::time::Instant::now();
        while started.elapsed() < CPU_CLOCK_AFTER / 2 {}
        assert!(!meter.leave());
        let after_spinning = meter.used();
        assert!(after_spinning >= CPU_CLOCK_AFTER / 2, "{after_spinning:?}");
        // Time between polls (the worker serving other requests) does not count.
        std::thread::sleep(Duration::from_millis(30));
        meter.enter();
        assert!(!meter.spent());
        meter.yielded();
        assert!(meter.leave());
        assert!(meter.used() < Duration::from_millis(15), "{:?}", meter.used());
    }

    #[test]
    fn a_first_poll_preempted_for_longer_than_the_budget_does_not_spend_it() {
        let meter = Meter::default();
        meter.arm(Duration::from_millis(20));
        // The call's first poll, timed by the monotonic clock, and its thread does not run for
        // longer than the whole budget (a sleep here; the quarantine thread waiting for every
        // worker on a busy machine).
        meter.enter();
        std::thread::sleep(Duration::from_millis(30));
        assert!(!meter.spent(), "the preemption counted");
        meter.leave();
        assert_eq!(meter.used(), CPU_CLOCK_AFTER);
        // The call's next polls are timed by the thread's CPU clock: a preemption does not count
        // there either, and what the call runs does.
        meter.enter();
        std::thread::sleep(Duration::from_millis(30));
        assert!(!meter.spent(), "the preemption counted");
        let started = thread_cpu().unwrap();
        while thread_cpu().unwrap() - started < nanos(Duration::from_millis(20)) {}
        assert!(meter.spent(), "20 ms of running did not spend a 20 ms budget");
    }

    #[test]
    fn past_its_first_millisecond_a_poll_counts_only_the_time_its_thread_ran() {
        let meter = Meter::default();
        meter.arm(Duration::from_millis(20));
        meter.enter();
        let started = std::time::Instant::now();
        while started.elapsed() < CPU_CLOCK_AFTER + Duration::from_millis(1) {}
        meter.leave();
        let before = meter.used();
        // A poll in which the thread does not run (a sleep here; a preemption on a busy machine)
        // for longer than the whole budget: by the wall clock the call would have spent it.
        meter.enter();
        std::thread::sleep(Duration::from_millis(30));
        assert!(!meter.spent(), "the sleep counted");
        let started = std::time::Instant::now();
        while started.elapsed() < Duration::from_millis(2) {}
        meter.leave();
        let added = meter.used() - before;
        assert!(
            added >= Duration::from_millis(1) && added < Duration::from_millis(10),
            "{added:?}"
        );
    }
}
