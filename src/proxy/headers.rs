//! Header handling at the proxy: hop-by-hop removal (RFC 9110 §7.6.1) and forwarding headers.

use http::HeaderMap;
use http::header::{self, HeaderName};

/// Headers that describe one connection, never forwarded (RFC 9110 §7.6.1, plus the
/// `Keep-Alive`/`Proxy-Connection` that old clients still send).
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "proxy-authorization",
    "proxy-authenticate",
];

/// The hop-by-hop headers to remove from `headers`: the fixed set and every header the
/// `Connection` header names. A protocol upgrade (`Connection: upgrade` with `Upgrade`) keeps
/// both headers so WebSockets pass, and `TE: trailers` passes (gRPC needs it).
///
/// `Transfer-Encoding` is left to pingora, which owns message framing on both sides.
pub fn hop_by_hop(headers: &HeaderMap) -> Vec<HeaderName> {
    let mut remove = Vec::new();
    let mut upgrade = false;
    for value in headers.get_all(header::CONNECTION) {
        for token in value.to_str().unwrap_or("").split(',') {
            let token = token.trim().to_ascii_lowercase();
            if token == "upgrade" {
                upgrade = true;
            } else if let Ok(name) = HeaderName::from_bytes(token.as_bytes())
                && !matches!(name, header::CONTENT_LENGTH | header::TRANSFER_ENCODING | header::HOST)
            {
                remove.push(name);
            }
        }
    }
    let upgrading = upgrade && headers.contains_key(header::UPGRADE);
    for name in HOP_BY_HOP {
        let keep = match name {
            "connection" | "upgrade" => upgrading,
            "te" => headers
                .get(header::TE)
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers")),
            _ => false,
        };
        if !keep && headers.contains_key(name) {
            remove.push(HeaderName::from_static(name));
        }
    }
    remove.sort_unstable_by(|a, b| a.as_str().cmp(b.as_str()));
    remove.dedup();
    remove
}

/// The `X-Forwarded-For` value: the client's address appended to what the client sent.
pub fn forwarded_for(existing: Option<&[u8]>, client: &str) -> String {
    match existing.map(|v| String::from_utf8_lossy(v)) {
        Some(prior) if !prior.trim().is_empty() => format!("{}, {client}", prior.trim()),
        _ => client.to_owned(),
    }
}

/// The `Via` value: sluice appended to any earlier hops, with the protocol version received.
pub fn via(existing: Option<&[u8]>, version: http::Version) -> String {
    let hop = match version {
        http::Version::HTTP_2 => "2 sluice",
        http::Version::HTTP_10 => "1.0 sluice",
        _ => "1.1 sluice",
    };
    match existing.map(|v| String::from_utf8_lossy(v)) {
        Some(prior) if !prior.trim().is_empty() => format!("{}, {hop}", prior.trim()),
        _ => hop.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        h
    }

    #[test]
    fn removes_fixed_set_and_connection_tokens() {
        let h = map(&[
            ("connection", "keep-alive, X-Secret"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("te", "gzip"),
            ("accept", "*/*"),
        ]);
        let mut removed: Vec<String> = hop_by_hop(&h).iter().map(|n| n.to_string()).collect();
        removed.sort();
        assert_eq!(removed, ["connection", "keep-alive", "te", "x-secret"]);
    }

    #[test]
    fn keeps_upgrades_and_te_trailers() {
        let h = map(&[("connection", "Upgrade"), ("upgrade", "websocket"), ("te", "trailers")]);
        assert!(hop_by_hop(&h).is_empty());
        let h = map(&[("upgrade", "websocket")]);
        assert_eq!(hop_by_hop(&h), [HeaderName::from_static("upgrade")]);
    }

    #[test]
    fn forwarding_values_append() {
        assert_eq!(forwarded_for(None, "10.0.0.1"), "10.0.0.1");
        assert_eq!(forwarded_for(Some(b"1.2.3.4"), "10.0.0.1"), "1.2.3.4, 10.0.0.1");
        assert_eq!(via(Some(b"1.1 edge"), http::Version::HTTP_11), "1.1 edge, 1.1 sluice");
        assert_eq!(via(None, http::Version::HTTP_2), "2 sluice");
    }
}
