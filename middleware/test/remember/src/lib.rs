//! Remembers, in its own memory, how many requests this instance served and the path of the
//! previous one, and tells the upstream: `x-served: N`, `x-previous: /path` (or `none`). With a
//! fresh instance per request it must always say `1` and `none`.
//!
//! Request headers steer it: `x-grow: N` keeps N MiB more memory, `x-trap` traps.
use std::sync::Mutex;

use sluice_sdk::*;

#[derive(Default)]
struct Remember {
    seen: Mutex<(u32, Option<String>)>,
    hoard: Mutex<Vec<Vec<u8>>>,
}

impl Middleware for Remember {
    fn init(_config: &str) -> Result<(Self, Registration), String> {
        Ok((Remember::default(), Registration::phases(Phases::REQUEST_HEADERS)))
    }

    fn on_request_headers(&self, req: Request) -> RequestDecision {
        if req.header("x-trap").is_some() {
            panic!("asked to trap");
        }
        if let Some(mib) = req
            .header("x-grow")
            .and_then(|v| std::str::from_utf8(v).ok()?.parse::<usize>().ok())
        {
            self.hoard
                .lock()
                .unwrap()
                .push(std::hint::black_box(vec![1u8; mib << 20]));
        }
        let mut seen = self.seen.lock().unwrap();
        seen.0 += 1;
        let previous = seen.1.replace(req.path_with_query.clone());
        let mut edits = HeaderEdits::set("x-served", seen.0.to_string());
        edits.set.push((
            "x-previous".into(),
            previous.unwrap_or_else(|| "none".into()).into_bytes(),
        ));
        RequestDecision::Next((edits, Vec::new()))
    }
}

export_middleware!(Remember);
