//! What a request leaves behind: its W3C trace context (accepted from the client, propagated
//! upstream), its metrics, and its access log line.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::time::{Duration, SystemTime};

use crate::chain::CallRecord;
use crate::config::AccessLog;

/// A request's place in a distributed trace (W3C Trace Context): the client's trace id when it
/// sent a valid `traceparent`, else a new one; sluice's own span id, which the upstream sees as
/// its parent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    /// 16 bytes, never all zero.
    pub trace_id: [u8; 16],
    /// sluice's span for this request: 8 bytes, never all zero.
    pub span_id: [u8; 8],
    /// The client's span, when it sent one.
    pub parent_id: Option<[u8; 8]>,
    /// `trace-flags` (bit 0: sampled). Kept from the client; `01` for a trace sluice starts.
    pub flags: u8,
}

impl TraceContext {
    /// The context for a request that sent `traceparent` (or none): a valid version-00 header
    /// continues that trace; anything else starts a new one.
    pub fn from_header(traceparent: Option<&[u8]>) -> TraceContext {
        let span_id = nonzero_bytes();
        match traceparent.and_then(parse_traceparent) {
            Some((trace_id, parent_id, flags)) => TraceContext {
                trace_id,
                span_id,
                parent_id: Some(parent_id),
                flags,
            },
            None => TraceContext {
                trace_id: nonzero_bytes(),
                span_id,
                parent_id: None,
                flags: 1,
            },
        }
    }

    /// The `traceparent` to send upstream: this trace, with sluice's span as the parent.
    pub fn traceparent(&self) -> String {
        format!(
            "00-{}-{}-{:02x}",
            hex::encode(self.trace_id),
            hex::encode(self.span_id),
            self.flags
        )
    }

    /// The trace id, hex.
    pub fn trace_id(&self) -> String {
        hex::encode(self.trace_id)
    }
}

/// Random bytes, not all zero (an all-zero id is invalid).
fn nonzero_bytes<const N: usize>() -> [u8; N] {
    loop {
        let mut bytes = [0u8; N];
        bytes.iter_mut().for_each(|b| *b = fastrand::u8(..));
        if bytes.iter().any(|&b| b != 0) {
            return bytes;
        }
    }
}

/// `00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`, lowercase, ids not all zero. A higher
/// version is read the same way, as the spec asks, when its first four fields parse.
fn parse_traceparent(value: &[u8]) -> Option<([u8; 16], [u8; 8], u8)> {
    let text = std::str::from_utf8(value).ok()?.trim();
    let mut fields = text.split('-');
    let (version, trace, parent, flags) = (fields.next()?, fields.next()?, fields.next()?, fields.next()?);
    let lower_hex =
        |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if !lower_hex(version, 2) || version == "ff" || (version == "00" && fields.next().is_some()) {
        return None;
    }
    if !lower_hex(trace, 32) || !lower_hex(parent, 16) || !lower_hex(flags, 2) {
        return None;
    }
    let mut trace_id = [0u8; 16];
    let mut parent_id = [0u8; 8];
    hex::decode_to_slice(trace, &mut trace_id).ok()?;
    hex::decode_to_slice(parent, &mut parent_id).ok()?;
    if trace_id == [0; 16] || parent_id == [0; 8] {
        return None;
    }
    Some((trace_id, parent_id, u8::from_str_radix(flags, 16).ok()?))
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_valid_traceparent_is_continued_and_a_bad_one_replaced() {
        let header = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let trace = TraceContext::from_header(Some(header));
        assert_eq!(trace.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(trace.parent_id, Some(hex_8("00f067aa0ba902b7")));
        let sent = trace.traceparent();
        assert!(sent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"), "{sent}");
        assert!(sent.ends_with("-01"));
        assert!(
            !sent.contains("00f067aa0ba902b7"),
            "sluice's own span is the parent upstream"
        );

        for bad in [
            &b"00-00000000000000000000000000000000-00f067aa0ba902b7-01"[..],
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            b"garbage",
        ] {
            let trace = TraceContext::from_header(Some(bad));
            assert_ne!(
                trace.trace_id(),
                "4bf92f3577b34da6a3ce929d0e0e4736",
                "{:?}",
                std::str::from_utf8(bad)
            );
            assert_eq!(trace.parent_id, None);
        }
        let future = TraceContext::from_header(Some(b"cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what"));
        assert_eq!(
            future.trace_id(),
            "4bf92f3577b34da6a3ce929d0e0e4736",
            "a later version is read"
        );
    }

    fn hex_8(s: &str) -> [u8; 8] {
        let mut out = [0u8; 8];
        hex::decode_to_slice(s, &mut out).unwrap();
        out
    }
}
