//! Decoding the heads sluice passes to a `compact-middleware` component: each head is one byte
//! string (the layout is in `wit/middleware.wit`), decoded here into the same [`Request`] and
//! [`Headers`] a `middleware` component is given. One copy into the component per head, instead
//! of one per field.

use crate::{Headers, Request};

/// Reads fields off an encoded head. sluice encodes every head it passes; a malformed one is a
/// host bug, and the component traps (the call fails by its `on-error` policy).
struct Fields<'a>(&'a [u8]);

impl<'a> Fields<'a> {
    fn take(&mut self, n: usize) -> &'a [u8] {
        let (taken, rest) = self.0.split_at(n);
        self.0 = rest;
        taken
    }

    fn count(&mut self) -> usize {
        let bytes = self.take(4);
        u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize
    }

    fn bytes(&mut self) -> &'a [u8] {
        let n = self.count();
        self.take(n)
    }

    fn string(&mut self) -> String {
        // sluice passes UTF-8 wherever the WIT says so; replacing never happens in practice.
        // `from_utf8` first: it checks ASCII a word at a time, where `from_utf8_lossy` walks the
        // bytes one by one (its `Utf8Chunks` was the top SDK entry of a built-in's profile).
        let bytes = self.bytes();
        match std::str::from_utf8(bytes) {
            Ok(text) => text.to_owned(),
            Err(_) => String::from_utf8_lossy(bytes).into_owned(),
        }
    }

    fn headers(&mut self) -> Headers {
        let n = self.count();
        (0..n).map(|_| (self.string(), self.bytes().to_vec())).collect()
    }
}

/// The request in `encoded`.
pub fn request(encoded: &[u8]) -> Request {
    let mut fields = Fields(encoded);
    let method = fields.string();
    let scheme = fields.string();
    let authority = fields.string();
    let path_with_query = fields.string();
    let client_addr = fields.string();
    let route = fields.string();
    let headers = fields.headers();
    let n = fields.count();
    let context = (0..n).map(|_| (fields.string(), fields.string())).collect();
    Request {
        method,
        scheme,
        authority,
        path_with_query,
        headers,
        client_addr,
        route,
        context,
    }
}

/// The status and headers of the response head in `encoded`.
pub fn response(encoded: &[u8]) -> (u16, Headers) {
    let mut fields = Fields(encoded);
    let status = fields.take(2);
    let status = u16::from_le_bytes([status[0], status[1]]);
    (status, fields.headers())
}
