//! Remembers, in its own memory, how many requests this instance served and the path of the
//! previous one, and tells the upstream: `x-served: N`, `x-previous: /path` (or `none`). With a
//! fresh instance per request it must always say `1` and `none`.
//!
//! Request headers steer it: `x-grow: N` keeps N MiB more memory, `x-trap` traps. Config
//! `{ "init-ms": N }` makes `init` compute for N ms, as a component compiling many schemas does.
use std::sync::Mutex;

use sluice_sdk::*;

#[derive(Default)]
struct Remember {
    seen: Mutex<(u32, Option<String>)>,
    hoard: Mutex<Vec<Vec<u8>>>,
}

impl Middleware for Remember {
    fn init(config: &str) -> Result<(Self, Registration), String> {
        let config: serde_json::Value = serde_json::from_str(config).map_err(|e| e.to_string())?;
        if let Some(ms) = config.get("init-ms").and_then(|ms| ms.as_u64()) {
            let started = std::time::Instant::now();
            let mut n = 0u64;
            while started.elapsed() < std::time::Duration::from_millis(ms) {
                n = std::hint::black_box(n.wrapping_add(1));
            }
        }
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
