//! How a head crosses into a `compact-middleware` component: one byte string, decoded by the
//! guest's SDK, instead of a string or list per field (each of which the canonical ABI copies on
//! its own, into memory the guest allocates for it: a call into the guest per field).
//!
//! The layout is the WIT's (`wit/middleware.wit`, world `compact-middleware`): a field is its
//! length (u32, little-endian) and its bytes; counts are u32 LE; a status is u16 LE.

use super::bindings::Fields;
use super::bindings::types::Request;

/// `req`, encoded: its six strings, its headers, its context.
pub fn request(req: &Request<'_>) -> Vec<u8> {
    let strings = [
        req.method,
        req.scheme,
        req.authority,
        req.path_with_query,
        req.client_addr,
        req.route,
    ];
    let size = strings.iter().map(|s| 4 + s.len()).sum::<usize>()
        + fields_size(req.headers)
        + 4
        + req.context.iter().map(|(k, v)| 8 + k.len() + v.len()).sum::<usize>();
    let mut out = Vec::with_capacity(size);
    for s in strings {
        field(&mut out, s.as_bytes());
    }
    fields(&mut out, req.headers);
    count(&mut out, req.context.len());
    for (key, value) in req.context {
        field(&mut out, key.as_bytes());
        field(&mut out, value.as_bytes());
    }
    out
}

/// A response head, encoded: its status, its headers.
pub fn response(status: u16, headers: &Fields<'_>) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + fields_size(headers));
    out.extend_from_slice(&status.to_le_bytes());
    fields(&mut out, headers);
    out
}

fn fields_size(headers: &Fields<'_>) -> usize {
    4 + headers.iter().map(|(n, v)| 8 + n.len() + v.len()).sum::<usize>()
}

fn fields(out: &mut Vec<u8>, headers: &Fields<'_>) {
    count(out, headers.len());
    for (name, value) in headers {
        field(out, name.as_bytes());
        field(out, value);
    }
}

fn count(out: &mut Vec<u8>, n: usize) {
    // A head's fields and a context are bounded far below 4 GiB (the proxy's header limits).
    out.extend_from_slice(&u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes());
}

fn field(out: &mut Vec<u8>, bytes: &[u8]) {
    count(out, bytes.len());
    out.extend_from_slice(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The layout the WIT documents, byte by byte: what every SDK's decoder reads.
    #[test]
    fn heads_are_encoded_as_the_wit_says() {
        let headers: &Fields<'_> = &[("accept", b"*/*"), ("x-raw", &[0xff, 0x00])];
        let context = [("jwt.sub", "u-1")];
        let req = Request {
            method: "GET",
            scheme: "http",
            authority: "a.example",
            path_with_query: "/p?q=1",
            headers,
            client_addr: "127.0.0.1:9",
            route: "r",
            context: &context,
        };
        let mut expected = Vec::new();
        for s in ["GET", "http", "a.example", "/p?q=1", "127.0.0.1:9", "r"] {
            expected.extend_from_slice(&(s.len() as u32).to_le_bytes());
            expected.extend_from_slice(s.as_bytes());
        }
        expected.extend_from_slice(&[2, 0, 0, 0]);
        expected.extend_from_slice(&[6, 0, 0, 0]);
        expected.extend_from_slice(b"accept");
        expected.extend_from_slice(&[3, 0, 0, 0]);
        expected.extend_from_slice(b"*/*");
        expected.extend_from_slice(&[5, 0, 0, 0]);
        expected.extend_from_slice(b"x-raw");
        expected.extend_from_slice(&[2, 0, 0, 0, 0xff, 0x00]);
        expected.extend_from_slice(&[1, 0, 0, 0]);
        expected.extend_from_slice(&[7, 0, 0, 0]);
        expected.extend_from_slice(b"jwt.sub");
        expected.extend_from_slice(&[3, 0, 0, 0]);
        expected.extend_from_slice(b"u-1");
        let encoded = request(&req);
        assert_eq!(encoded, expected);
        assert_eq!(encoded.capacity(), encoded.len(), "sized exactly, allocated once");

        let encoded = response(404, &headers[..1]);
        let mut expected = vec![0x94, 0x01, 1, 0, 0, 0, 6, 0, 0, 0];
        expected.extend_from_slice(b"accept");
        expected.extend_from_slice(&[3, 0, 0, 0]);
        expected.extend_from_slice(b"*/*");
        assert_eq!(encoded, expected);
        assert_eq!(response(204, &[]), vec![0xcc, 0x00, 0, 0, 0, 0]);
    }
}
