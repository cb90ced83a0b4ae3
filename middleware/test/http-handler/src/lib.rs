//! A standard `wasi:http` 0.3 component (the `service` world: it exports `wasi:http/handler`),
//! written against the `wasip3` crate's bindings only: it answers every request with
//! `hello from wasi:http 0.3`. sluice does not run such components as chain links yet, and must
//! say so at load instead of reporting a missing `init`.
use wasip3::http::types::{ErrorCode, Fields, Request, Response};
use wasip3::{wit_bindgen, wit_future, wit_stream};

wasip3::http::service::export!(Hello);

struct Hello;

impl wasip3::exports::http::handler::Guest for Hello {
    async fn handle(_request: Request) -> Result<Response, ErrorCode> {
        let (mut body_tx, body_rx) = wit_stream::new();
        let (trailers_tx, trailers_rx) = wit_future::new(|| Ok(None));
        let (response, _sent) = Response::new(Fields::new(), Some(body_rx), trailers_rx);
        drop(trailers_tx);
        wit_bindgen::spawn_local(async move {
            let unwritten = body_tx.write_all(b"hello from wasi:http 0.3".to_vec()).await;
            assert!(unwritten.is_empty(), "the body was not taken whole");
        });
        Ok(response)
    }
}
