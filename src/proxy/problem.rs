//! Error answers sluice writes itself, as RFC 9457 `application/problem+json`.

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;

/// A response sluice answers with on its own behalf.
#[derive(Debug, Clone)]
pub struct Problem {
    /// HTTP status.
    pub status: u16,
    /// A human-readable explanation of this occurrence.
    pub detail: String,
    /// Extra headers (e.g. `Allow` on a 405).
    pub headers: Vec<(&'static str, String)>,
}

impl Problem {
    /// A problem with `status` and `detail`.
    pub fn new(status: u16, detail: impl Into<String>) -> Self {
        Problem {
            status,
            detail: detail.into(),
            headers: Vec::new(),
        }
    }

    /// Adds a response header.
    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    /// The JSON body.
    pub fn body(&self) -> Bytes {
        let title = http::StatusCode::from_u16(self.status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("Error");
        let body = serde_json::json!({
            "type": "about:blank",
            "title": title,
            "status": self.status,
            "detail": self.detail,
        });
        Bytes::from(body.to_string())
    }

    /// The response head, with the body's length.
    pub fn header(&self) -> pingora::Result<ResponseHeader> {
        let mut resp = ResponseHeader::build(self.status, Some(4 + self.headers.len()))?;
        resp.insert_header(http::header::CONTENT_TYPE, "application/problem+json")?;
        resp.insert_header(http::header::CONTENT_LENGTH, self.body().len().to_string())?;
        resp.insert_header(http::header::CACHE_CONTROL, "no-store")?;
        for (name, value) in &self.headers {
            resp.insert_header(*name, value.as_str())?;
        }
        Ok(resp)
    }

    /// Writes this problem as the whole response to `session`.
    pub async fn write(&self, session: &mut Session) -> pingora::Result<()> {
        let body = self.body();
        let resp = self.header()?;
        let head_only = session.req_header().method == http::Method::HEAD;
        session.write_response_header(Box::new(resp), head_only).await?;
        if !head_only {
            session.write_response_body(Some(body), true).await?;
        }
        Ok(())
    }
}
