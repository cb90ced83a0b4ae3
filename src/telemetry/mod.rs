//! Logs and traces: the `tracing` subscriber (log lines to stderr, filtered by `RUST_LOG`) and, with
//! `[server] otlp`, the request and middleware spans exported with OTLP over HTTP.
//!
//! Without `otlp` the spans are `debug` level and cost a disabled-callsite check. With it, the
//! export layer enables sluice's spans (and only spans: log lines still go by `RUST_LOG`); a
//! request's span joins the client's W3C trace ([`join`]) and its span id is the parent sluice
//! sends upstream, so the upstream's spans nest under sluice's. Spans go through the SDK's batch
//! processor, on a thread of its own, never a worker's.

use std::io::IsTerminal;
use std::sync::OnceLock;
use std::time::Duration;

use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracerProvider};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::FilterExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

mod trace_context;

pub use trace_context::TraceContext;

use crate::config::OtlpConfig;

/// Log levels when `RUST_LOG` is not set.
const DEFAULT_FILTER: &str = "info,pingora_core=warn,pingora_proxy=warn,pingora=warn";

/// How often the batch processor sends what it has.
const EXPORT_INTERVAL: Duration = Duration::from_secs(1);

/// The tracer provider, when spans are exported.
static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// How log lines are written, from `SLUICE_LOG_FORMAT`: `text` (the default; coloured only when
/// stderr is a terminal and `NO_COLOR` is unset) or `json` (one object a line, for log collectors).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

impl LogFormat {
    /// The format `SLUICE_LOG_FORMAT` asks for.
    pub fn from_env() -> Result<Self, String> {
        match std::env::var("SLUICE_LOG_FORMAT").as_deref() {
            Err(_) | Ok("" | "text") => Ok(LogFormat::Text),
            Ok("json") => Ok(LogFormat::Json),
            Ok(other) => Err(format!("`SLUICE_LOG_FORMAT` is `{other}`; use `text` or `json`")),
        }
    }
}

/// Installs the subscriber: log lines to stderr (in `SLUICE_LOG_FORMAT`), and with `otlp` the span
/// exporter. Fails when the format is unknown or the exporter cannot be built.
pub fn init(otlp: Option<&OtlpConfig>) -> Result<(), String> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| DEFAULT_FILTER.into());
    let lines = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let lines = match LogFormat::from_env()? {
        LogFormat::Json => lines.json().boxed(),
        LogFormat::Text => {
            let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
            lines.with_ansi(colour).boxed()
        }
    };
    let spans = otlp.map(span_exporter).transpose()?;
    tracing_subscriber::registry()
        .with(lines.with_filter(filter.and(PingoraLines(OncePerSecond::new()))))
        .with(spans)
        .init();
    Ok(())
}

/// The layer exporting sluice's spans with OTLP; keeps the provider for [`shutdown`].
fn span_exporter<S>(otlp: &OtlpConfig) -> Result<impl Layer<S>, String>
where
    S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
{
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(otlp.endpoint.get_ref().as_str())
        .with_timeout(otlp.timeout.0)
        .build()
        .map_err(|e| format!("cannot set up the OTLP exporter: {e}"))?;
    let batches = BatchSpanProcessor::builder(exporter)
        .with_batch_config(
            BatchConfigBuilder::default()
                .with_scheduled_delay(EXPORT_INTERVAL)
                .build(),
        )
        .build();
    let provider = SdkTracerProvider::builder()
        .with_span_processor(batches)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            *otlp.sample_ratio.get_ref(),
        ))))
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name(otlp.service_name.clone())
                .build(),
        )
        .build();
    let spans = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("sluice"))
        .with_filter(tracing_subscriber::filter::filter_fn(|meta| {
            meta.is_span() && meta.target().starts_with("sluice")
        }));
    let _ = PROVIDER.set(provider);
    Ok(spans)
}

/// Whether spans are exported.
pub fn exporting() -> bool {
    PROVIDER.get().is_some()
}

/// Makes `span` (a request's) part of `trace`: the child of the client's span when it sent one,
/// else the root of a new trace. Returns the trace context to send upstream and log: the
/// exported span's trace id, span id and sampled flag.
pub fn join(span: &tracing::Span, trace: TraceContext) -> TraceContext {
    if let Some(parent) = trace.parent_id {
        let remote = SpanContext::new(
            TraceId::from_bytes(trace.trace_id),
            SpanId::from_bytes(parent),
            TraceFlags::new(trace.flags),
            true,
            TraceState::default(),
        );
        let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(remote));
    }
    let context = span.context();
    let own = context.span().span_context().clone();
    if !own.is_valid() {
        return trace;
    }
    TraceContext {
        trace_id: own.trace_id().to_bytes(),
        span_id: own.span_id().to_bytes(),
        parent_id: trace.parent_id,
        flags: own.trace_flags().to_u8(),
    }
}

/// A log line that comes at most once a second, for what would otherwise be written per request
/// (an upstream failing every request it gets). It counts the lines it held back, for the next one
/// to say.
pub struct OncePerSecond {
    /// The second (since [`EPOCH`], plus one) the last line went out in.
    last: std::sync::atomic::AtomicU64,
    held: std::sync::atomic::AtomicU64,
}

/// What every [`OncePerSecond`] counts its seconds from.
static EPOCH: std::sync::LazyLock<std::time::Instant> = std::sync::LazyLock::new(std::time::Instant::now);

impl Default for OncePerSecond {
    fn default() -> Self {
        OncePerSecond::new()
    }
}

impl OncePerSecond {
    /// A gate no line has gone through yet.
    pub const fn new() -> OncePerSecond {
        OncePerSecond {
            last: std::sync::atomic::AtomicU64::new(0),
            held: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// `Some(n)` when a line may go out now, `n` the lines held back since the last one; `None`
    /// when one went out this second already (this one is counted).
    pub fn admit(&self) -> Option<u64> {
        use std::sync::atomic::Ordering::Relaxed;
        let now = EPOCH.elapsed().as_secs() + 1;
        let last = self.last.load(Relaxed);
        if last != now && self.last.compare_exchange(last, now, Relaxed, Relaxed).is_ok() {
            return Some(self.held.swap(0, Relaxed));
        }
        self.held.fetch_add(1, Relaxed);
        None
    }
}

/// pingora's own warning and error lines: each is about one connection (a client that sent
/// garbage, went away mid-request, or trickled its head past `header-timeout`), so a flood of
/// hostile clients would write one line per connection on the workers serving everyone else. They
/// go out at most once a second; `sluice_log_lines_held_back_total` counts the others.
struct PingoraLines(OncePerSecond);

impl<S> tracing_subscriber::layer::Filter<S> for PingoraLines {
    fn enabled(&self, _: &tracing::Metadata<'_>, _: &tracing_subscriber::layer::Context<'_, S>) -> bool {
        true
    }

    // Said explicitly: the defaults ("sometimes", no level hint) would make every callsite and
    // every level interesting to the combined filter, and every disabled `debug!` of pingora's
    // (the `log` crate checks the process's max level first) a full filter evaluation.
    fn callsite_enabled(&self, _: &'static tracing::Metadata<'static>) -> tracing::subscriber::Interest {
        tracing::subscriber::Interest::always()
    }

    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        Some(tracing::level_filters::LevelFilter::TRACE)
    }

    fn event_enabled(&self, event: &tracing::Event<'_>, _: &tracing_subscriber::layer::Context<'_, S>) -> bool {
        // pingora logs with the `log` crate: its lines arrive with the target `log`, the real one
        // in a field.
        let normalized = tracing_log::NormalizeEvent::normalized_metadata(event);
        let meta = normalized.as_ref().unwrap_or_else(|| event.metadata());
        if *meta.level() > tracing::Level::WARN || !meta.target().starts_with("pingora") {
            return true;
        }
        if self.0.admit().is_some() {
            return true;
        }
        crate::metrics::metrics().log_lines_held_back.inc();
        false
    }
}

/// Sends the spans not exported yet (before the process exits).
pub fn flush() {
    if let Some(provider) = PROVIDER.get() {
        let _ = provider.force_flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing::level_filters::LevelFilter;
    use tracing_subscriber::layer::Filter;

    /// Sampling pingora's lines must not widen the process's max level: `log` records (all of
    /// pingora's) below it are dropped before any filter runs, and with no hint every `debug!` of
    /// pingora's on the request path would be evaluated.
    #[test]
    fn sampling_pingora_lines_keeps_the_max_level() {
        let filter = tracing_subscriber::EnvFilter::new("error").and(PingoraLines(OncePerSecond::new()));
        let hint = <_ as Filter<tracing_subscriber::Registry>>::max_level_hint(&filter);
        assert_eq!(hint, Some(LevelFilter::ERROR));
    }
}
