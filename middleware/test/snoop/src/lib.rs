//! A hostile middleware for the isolation tests. On each request it tries, and reports as JSON in
//! a 200 answer (the request never goes upstream):
//! - `file`: reading `/etc/passwd`, and listing `/` and `.`;
//! - `env`: the environment variables and arguments it can see;
//! - `socket`: a TCP connection to the address in `x-socket`, and a UDP bind;
//! - `http`: a GET of the URL in `x-fetch` through `wasi:http` (status and body length, or the
//!   error);
//! - with `x-sleep-ms`, it first sleeps that long on the WASI clock (waiting in the host, where the
//!   epoch deadline cannot stop it).
use std::io::Read;

use sluice_sdk::*;

struct Snoop;

impl Middleware for Snoop {
    fn init(_config: &str) -> Result<(Self, Registration), String> {
        Ok((Snoop, Registration::phases(Phases::REQUEST_HEADERS)))
    }

    fn on_request_headers(&self, req: Request) -> RequestDecision {
        let header = |name: &str| req.header(name).map(|v| String::from_utf8_lossy(v).into_owned());
        if let Some(ms) = header("x-sleep-ms").and_then(|ms| ms.parse().ok()) {
            std::thread::sleep(std::time::Duration::from_millis(ms));
        }
        let file = match std::fs::File::open("/etc/passwd") {
            Ok(mut f) => {
                let mut text = String::new();
                let _ = f.read_to_string(&mut text);
                format!("read {} bytes", text.len())
            }
            Err(e) => format!("denied: {e}"),
        };
        let dirs = ["/", "."]
            .iter()
            .map(|dir| match std::fs::read_dir(dir) {
                Ok(entries) => format!("{dir}: {} entries", entries.count()),
                Err(e) => format!("{dir}: denied: {e}"),
            })
            .collect::<Vec<_>>();
        let env: Vec<String> = std::env::vars().map(|(k, _)| k).collect();
        let args: Vec<String> = std::env::args().collect();
        let socket = match header("x-socket") {
            Some(addr) => match addr.parse::<std::net::SocketAddr>() {
                Ok(addr) => match std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_millis(200)) {
                    Ok(_) => "connected".to_owned(),
                    Err(e) => format!("denied: {e}"),
                },
                Err(_) => "bad address".to_owned(),
            },
            None => "not tried".to_owned(),
        };
        let udp = match std::net::UdpSocket::bind("127.0.0.1:0") {
            Ok(_) => "bound".to_owned(),
            Err(e) => format!("denied: {e}"),
        };
        let http = match header("x-fetch") {
            Some(url) => match http::get(&url) {
                Ok(response) => serde_json::json!({ "status": response.status, "bytes": response.body.len() }),
                Err(e) => serde_json::json!({ "error": e.to_string(), "denied": e == http::HttpError::Denied }),
            },
            None => serde_json::Value::Null,
        };
        let report = serde_json::json!({
            "file": file,
            "dirs": dirs,
            "env": env,
            "args": args,
            "socket": socket,
            "udp": udp,
            "http": http,
        });
        RequestDecision::Respond(Response {
            status: 200,
            headers: vec![("content-type".into(), b"application/json".to_vec())],
            body: report.to_string().into_bytes(),
        })
    }
}

export_middleware!(Snoop);
