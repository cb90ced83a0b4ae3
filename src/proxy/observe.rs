//! What a request leaves behind: its metrics and its access log line (with its W3C trace context,
//! `telemetry::TraceContext`).

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::time::{Duration, SystemTime};

use crate::chain::CallRecord;
use crate::config::AccessLog;

/// One request, as its access log line shows it.
pub struct AccessEntry<'a> {
    /// When the request arrived.
    pub time: SystemTime,
    /// The route, if one matched.
    pub route: Option<&'a str>,
    /// `GET`, ...
    pub method: &'a str,
    /// The path and query.
    pub path: &'a str,
    /// The status sent; 0 if none was.
    pub status: u16,
    /// From the request head to the end.
    pub duration: Duration,
    /// The upstream and the target that served it, if one did.
    pub upstream: Option<(&'a str, Option<SocketAddr>)>,
    /// Request and response body bytes.
    pub bytes_in: usize,
    /// Response body bytes sent.
    pub bytes_out: usize,
    /// The client's address.
    pub client: Option<String>,
    /// The trace id.
    pub trace_id: String,
    /// The middleware calls made.
    pub calls: &'a [CallRecord],
    /// What went wrong, when the request failed.
    pub error: Option<String>,
}

impl AccessEntry<'_> {
    /// The JSON line (without the newline).
    pub fn to_json(&self) -> String {
        let middleware: Vec<serde_json::Value> = self
            .calls
            .iter()
            .map(|call| {
                let mut entry = serde_json::json!({
                    "name": &*call.middleware,
                    "phase": call.phase.as_str(),
                    "outcome": call.outcome,
                    "host_calls": {
                        "state": call.host_calls.state,
                        "log": call.host_calls.log,
                        "http": call.host_calls.http,
                    },
                });
                if let Some(status) = call.status {
                    entry["status"] = status.into();
                }
                entry
            })
            .collect();
        let time = humantime::format_rfc3339_millis(self.time).to_string();
        serde_json::json!({
            "time": time,
            "route": self.route,
            "method": self.method,
            "path": self.path,
            "status": self.status,
            "duration_ms": (self.duration.as_secs_f64() * 1e6).round() / 1e3,
            "upstream": self.upstream.map(|(name, _)| name),
            "target": self.upstream.and_then(|(_, target)| target).map(|t| t.to_string()),
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "client": self.client,
            "trace_id": self.trace_id,
            "middleware": middleware,
            "error": self.error,
        })
        .to_string()
    }
}

/// Lines queued for the writer thread before new ones are dropped (and counted).
const QUEUE: usize = 64 * 1024;

/// The access log: lines go through a bounded queue to a thread that writes them, so a slow disk
/// or a blocked stdout never holds up a worker. Lines it cannot keep up with are dropped and
/// counted (`sluice_access_log_dropped_total`).
#[derive(Clone)]
pub struct AccessLogger {
    queue: SyncSender<Queued>,
}

/// What the writer thread is given.
enum Queued {
    Line(String),
    /// Write everything before this, flush, then say so.
    Flush(SyncSender<()>),
}

impl AccessLogger {
    /// Starts the writer for `target` (`base` resolves a relative file path); `None` when off.
    pub fn start(target: &AccessLog, base: &std::path::Path) -> std::io::Result<Option<Arc<AccessLogger>>> {
        let out: Box<dyn Write + Send> = match target {
            AccessLog::Off => return Ok(None),
            AccessLog::Stdout => Box::new(std::io::stdout()),
            AccessLog::File(path) => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(base.join(path))?,
            ),
        };
        let (queue, lines) = std::sync::mpsc::sync_channel(QUEUE);
        std::thread::Builder::new()
            .name("sluice-access-log".into())
            .spawn(move || write_lines(lines, out))?;
        Ok(Some(Arc::new(AccessLogger { queue })))
    }

    /// Queues one line.
    pub fn log(&self, line: String) {
        match self.queue.try_send(Queued::Line(line)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                crate::metrics::metrics().access_log_dropped.inc();
            }
            Err(TrySendError::Disconnected(_)) => {}
        }
    }

    /// Waits (up to `timeout`) until every line queued so far is written and flushed: before the
    /// process exits.
    pub fn flush(&self, timeout: Duration) {
        let (done, flushed) = std::sync::mpsc::sync_channel(1);
        if self.queue.send(Queued::Flush(done)).is_ok() {
            let _ = flushed.recv_timeout(timeout);
        }
    }
}

/// Writes lines as they come, flushing whenever the queue is empty.
fn write_lines(queue: Receiver<Queued>, out: Box<dyn Write + Send>) {
    let mut out = std::io::BufWriter::with_capacity(64 << 10, out);
    while let Ok(first) = queue.recv() {
        let mut flushed = Vec::new();
        for item in std::iter::once(first).chain(std::iter::from_fn(|| queue.try_recv().ok())) {
            match item {
                Queued::Line(line) => {
                    let _ = writeln!(out, "{line}");
                }
                Queued::Flush(done) => flushed.push(done),
            }
        }
        if out.flush().is_err() {
            tracing::warn!("cannot write the access log");
        }
        for done in flushed {
            let _ = done.send(());
        }
    }
}
