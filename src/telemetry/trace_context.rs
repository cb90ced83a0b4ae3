//! W3C Trace Context: the `traceparent` a request arrives with, continued, and the one sluice
//! sends upstream.

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
