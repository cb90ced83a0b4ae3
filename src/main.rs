//! The `sluice` command: run, check, new, demo.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sluice::config::{self, ListenAddr};
use sluice::server::Start;

/// A programmable HTTP reverse proxy: pingora in front, a chain of WebAssembly components per route.
#[derive(Parser)]
#[command(name = "sluice", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy with a config file.
    Run {
        /// The TOML config file.
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        /// Replace the sluice running with this config without dropping a connection: load
        /// everything, then take over its listening sockets (it finishes its requests and exits).
        #[arg(long)]
        upgrade: bool,
    },
    /// Check config files: parse, validate and load everything, report every problem, then exit.
    ///
    /// Exits 0 when every file is good, 1 otherwise; problems are printed as `file:line:col: `key`: message`.
    Check {
        /// One or more TOML config files.
        #[arg(short, long, value_name = "FILE", num_args = 1.., required = true)]
        config: Vec<PathBuf>,
    },
    /// Publish a component to an OCI registry, in the Wasm artifact format sluice pulls
    /// (`component = "oci://..."`); prints the manifest digest to pin or sign.
    Push {
        /// The `.wasm` component.
        #[arg(value_name = "FILE")]
        component: PathBuf,
        /// Where: `oci://HOST[:PORT]/REPOSITORY:TAG`.
        #[arg(value_name = "REFERENCE")]
        reference: String,
        /// Speak plain HTTP to this registry (a local or test registry).
        #[arg(long)]
        insecure: bool,
        /// A docker-style `config.json` with the registry's credentials (default:
        /// `SLUICE_REGISTRY_CONFIG`, else anonymous).
        #[arg(long, value_name = "FILE")]
        credentials_file: Option<PathBuf>,
    },
    /// Start a project: `sluice new middleware NAME --lang rust|js|python`.
    New {
        #[command(subcommand)]
        what: New,
    },
    /// Run sluice in front of an embedded echo upstream, with a middleware chain (`src/demo.toml`).
    Demo {
        /// Where the proxy listens.
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
        /// Where the admin API listens.
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9090")]
        admin: std::net::SocketAddr,
        /// The artifact cache (default: `sluice-demo-cache` in the temporary directory).
        #[arg(long, value_name = "DIR")]
        cache_dir: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum New {
    /// A middleware project: its SDK and the WIT contract vendored, a working example, a
    /// `Makefile` whose `make` builds `NAME.wasm`, and a README on running and hot-swapping it.
    Middleware {
        /// The middleware's name (`[a-z][a-z0-9-]*`): the project's directory and component file.
        name: String,
        /// The language: rust, js or python.
        #[arg(long, value_name = "LANG")]
        lang: sluice::scaffold::Lang,
        /// Where to write the project (default: `./NAME`); must not exist.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

/// mimalloc: glibc malloc was a tenth of the proxy's CPU under load (benches/load.sh).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The demo's config, embedded so `sluice demo` runs from anywhere.
const DEMO_CONFIG: &str = include_str!("demo.toml");
/// The demo's polyglot chain, appended when the JavaScript and Python components are built.
const DEMO_POLYGLOT_CONFIG: &str = include_str!("demo-polyglot.toml");

fn main() -> ExitCode {
    // One TLS crypto provider for the process (ring, as pingora uses): every rustls user in it
    // (the OTLP exporter's and the registry client's reqwest, upstream TLS) finds it installed.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config, upgrade } => {
            let start = if upgrade { Start::Upgrade } else { Start::Fresh };
            let config = config::load(&config)
                .map_err(sluice::error::Error::from)
                .and_then(|config| {
                    let otlp = config.server.otlp.as_ref().map(|o| o.get_ref());
                    sluice::telemetry::init(otlp).map_err(sluice::error::Error::Runtime)?;
                    Ok(config)
                });
            run(config, start)
        }
        Command::Check { config } => match logs_only() {
            Ok(()) => check(&config),
            Err(code) => code,
        },
        Command::New {
            what: New::Middleware { name, lang, dir },
        } => {
            let dir = dir.unwrap_or_else(|| PathBuf::from(&name));
            match sluice::scaffold::create(&dir, &name, lang) {
                Ok(()) => {
                    println!("wrote a {lang} middleware `{name}` in {}", dir.display());
                    println!(
                        "  cd {} && make    # builds {name}.wasm; README.md says what next",
                        dir.display()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Push {
            component,
            reference,
            insecure,
            credentials_file,
        } => match logs_only() {
            Ok(()) => push(&component, &reference, insecure, credentials_file),
            Err(code) => code,
        },
        Command::Demo {
            listen,
            admin,
            cache_dir,
        } => match logs_only() {
            Ok(()) => demo(listen, admin, cache_dir),
            Err(code) => code,
        },
    }
}

/// `sluice push`: checks the file is a component, publishes it, prints the digest.
fn push(component: &std::path::Path, reference: &str, insecure: bool, credentials: Option<PathBuf>) -> ExitCode {
    let fail = |message: String| {
        eprintln!("error: {message}");
        ExitCode::FAILURE
    };
    let reference = match sluice::config::ComponentRef::try_from(reference.to_owned()) {
        Ok(sluice::config::ComponentRef::Oci(reference)) if reference.tag().is_some() => reference,
        Ok(_) => return fail(format!("`{reference}` is not `oci://HOST[:PORT]/REPOSITORY:TAG`")),
        Err(e) => return fail(e),
    };
    let bytes = match std::fs::read(component) {
        Ok(bytes) => bytes,
        Err(e) => return fail(format!("cannot read `{}`: {e}", component.display())),
    };
    let (imports, exports) = match sluice::runtime::interface(&bytes) {
        Ok(interface) => interface,
        Err(e) => return fail(format!("`{}`: {e}", component.display())),
    };
    let settings = sluice::oci::Settings {
        insecure: if insecure {
            vec![reference.registry().to_owned()]
        } else {
            Vec::new()
        },
        credentials_file: credentials.or_else(|| std::env::var_os("SLUICE_REGISTRY_CONFIG").map(PathBuf::from)),
        timeout: std::time::Duration::from_secs(30),
    };
    let cache = std::env::temp_dir().join("sluice-push");
    let pushed = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
        .and_then(|rt| {
            rt.block_on(async {
                let registry = sluice::oci::Registry::new(settings, &cache).map_err(|e| e.to_string())?;
                registry
                    .push(&reference, bytes.into(), imports, exports)
                    .await
                    .map_err(|e| e.to_string())
            })
        });
    match pushed {
        Ok(digest) => {
            println!("pushed {} as oci://{}", component.display(), reference.whole());
            println!("digest: {digest}");
            println!(
                "pin it:  component = \"oci://{}/{}@{digest}\"",
                reference.registry(),
                reference.repository()
            );
            ExitCode::SUCCESS
        }
        Err(e) => fail(format!("cannot push to `oci://{}`: {e}", reference.whole())),
    }
}

/// The subscriber without span export; fails only on an unknown `SLUICE_LOG_FORMAT`.
fn logs_only() -> Result<(), ExitCode> {
    sluice::telemetry::init(None).map_err(|e| report(&sluice::error::Error::Runtime(e)))
}

fn run(config: Result<config::Config, sluice::error::Error>, start: Start) -> ExitCode {
    let server = config.and_then(|config| sluice::server::build(config, start));
    match server {
        Ok(server) => server.run_forever(),
        Err(e) => report(&e),
    }
}

/// Prints a startup error: config problems one per line as `file:line:col: ...`, others prefixed.
fn report(e: &sluice::error::Error) -> ExitCode {
    match e {
        sluice::error::Error::Config(errors) => eprintln!("{errors}"),
        other => eprintln!("error: {other}"),
    }
    ExitCode::FAILURE
}

fn check(files: &[PathBuf]) -> ExitCode {
    let mut failed = false;
    for file in files {
        let result = config::load(file)
            .map_err(sluice::error::Error::from)
            .and_then(|config| sluice::server::load(config).map(|(snapshot, _)| snapshot.config));
        match result {
            Ok(config) => println!(
                "{}: ok (routes: {}, upstreams: {}, middleware: {})",
                file.display(),
                config.routes.len(),
                config.upstreams.len(),
                config.middleware.len()
            ),
            Err(e) => {
                failed = true;
                eprintln!("{e}");
            }
        }
    }
    if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}

/// Where `scripts/build-polyglot.sh` puts the JavaScript and Python components.
const POLYGLOT_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/target/polyglot");

/// The demo's JWT (HS256 with `src/demo.toml`'s secret; `sub` demo-user, expires in 2100),
/// signed with PyJWT.
const DEMO_TOKEN: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJkZW1vLXVzZXIiLCJpc3MiOiJzbHVpY2UtZGVtbyIsImV4cCI6NDEwMjQ0NDgwMCwibmFtZSI6IkRlbW8gVXNlciJ9.472LhJgeIapk2aH8LAhzCS6jbY37MMFPz4u__PCpLAE";

fn demo(listen: std::net::SocketAddr, admin: std::net::SocketAddr, cache_dir: Option<PathBuf>) -> ExitCode {
    // The admin API on loopback needs no token; with `SLUICE_ADMIN_TOKEN` set, it needs that one.
    let admin_token = std::env::var("SLUICE_ADMIN_TOKEN")
        .ok()
        .filter(|t| !t.trim().is_empty());
    let polyglot = ["hello_js.wasm", "hello_py.wasm"]
        .iter()
        .all(|f| std::path::Path::new(POLYGLOT_DIR).join(f).exists());
    let mut source = DEMO_CONFIG.to_owned();
    if polyglot {
        source.push('\n');
        source.push_str(DEMO_POLYGLOT_CONFIG);
    }
    let source = source
        .replace("{{components}}", sluice::artifacts::COMPONENT_DIR)
        .replace("{{polyglot}}", POLYGLOT_DIR);
    let mut config = match config::parse(&source, std::path::Path::new("demo.toml")) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("error: the embedded demo config is invalid:\n{e}");
            return ExitCode::FAILURE;
        }
    };
    config.server.listen = toml::Spanned::new(0..0, vec![toml::Spanned::new(0..0, ListenAddr(listen))]);
    config.server.admin = Some(toml::Spanned::new(0..0, ListenAddr(admin)));
    config.server.admin_token_env = admin_token.as_ref().map(|_| "SLUICE_ADMIN_TOKEN".to_owned());
    config.server.cache_dir = Some(cache_dir.unwrap_or_else(|| std::env::temp_dir().join("sluice-demo-cache")));
    let echo_addrs: Vec<std::net::SocketAddr> = config
        .upstreams
        .values()
        .flat_map(|u| u.targets.get_ref().iter())
        .filter_map(|t| format!("{}", t.get_ref()).parse().ok())
        .collect();
    if let Err(e) = sluice::echo::spawn_background(echo_addrs.clone()) {
        eprintln!("error: cannot start the demo's echo upstream: {e}");
        return ExitCode::FAILURE;
    }
    config.server.watch = false; // the embedded config is no file to watch
    if polyglot {
        eprintln!(
            "sluice demo: loading; the first start compiles the JavaScript and Python middleware \
             (a minute; cached after)"
        );
    }
    let server = match sluice::server::build(config, Start::Fresh) {
        Ok(server) => server,
        Err(e) => return report(&e),
    };
    let upstreams: Vec<String> = echo_addrs.iter().map(|a| a.to_string()).collect();
    let l = format!("http://{listen}");
    let a = format!("http://{admin}");
    let bearer = "-H \"Authorization: Bearer $TOKEN\"";
    let json = "-H 'content-type: application/json'";
    println!(
        "sluice demo: proxy on {l}, admin API on {a}, echo upstream on {} (config: src/demo.toml)\n\
         The echo answers with a JSON description of the request it received.\n",
        upstreams.join(" and ")
    );
    println!("Routing and Wasm middleware:");
    line(
        &format!("curl -si {l}/users/42"),
        "`block` and `tag` run: x-stamp-* on both sides",
    );
    line(
        &format!("curl -si -H 'x-block: 1' {l}/users/42"),
        "403 from `block`; the upstream never sees it",
    );
    line(
        &format!("curl -si -X DELETE {l}/users/42"),
        "405: route `users` allows GET and HEAD",
    );
    println!("\nThe built-in middleware:");
    line(&format!("export TOKEN={DEMO_TOKEN}"), "a JWT for `demo-user`");
    line(&format!("curl -si {l}/account"), "401 from auth-jwt: no token");
    line(
        &format!("curl -si {bearer} {l}/account"),
        "200: the upstream sees x-user-id: demo-user",
    );
    line(
        &format!("for i in 1 2 3 4; do curl -s -o /dev/null -w '%{{http_code}} ' {bearer} {l}/account; done; echo"),
        "rate-limit: 3 per 10 s per user, then 429",
    );
    line(
        &format!("curl -si {json} -d '{{\"id\":\"7\",\"items\":[]}}' {l}/orders"),
        "400 from schema-validate, each error listed; the upstream never sees it",
    );
    line(
        &format!("curl -si {json} -d '{{\"id\":7,\"items\":[{{\"sku\":\"A-1\",\"qty\":2}}]}}' {l}/orders"),
        "a valid order goes upstream",
    );
    line(
        &format!(
            "curl -s -H 'x-echo-body: raw' {json} -d '{{\"name\":\"Ada Lovelace\",\"email\":\"ada@example.com\",\"card\":\"4111 1111 1111 1111\",\"phone\":\"+1 415 555 0100\"}}' {l}/customers/7"
        ),
        "redact masks the record the echo sends back",
    );
    if polyglot {
        println!("\nOne middleware in Rust, JavaScript and Python, chained on one route:");
        line(
            &format!("curl -si -H 'x-name: ada' {l}/hello"),
            "x-hello-lang: python, javascript, rust (response phases run in reverse)",
        );
        println!("\nHot swap through the admin API, no request dropped:");
        let auth = match admin_token {
            Some(_) => "-H \"Authorization: Bearer $SLUICE_ADMIN_TOKEN\" ",
            None => "",
        };
        line(
            &format!(
                "curl -s -X PUT --data-binary @{POLYGLOT_DIR}/hello_js.wasm {auth}{a}/admin/middleware/hello-py/component"
            ),
            "link `hello-py` now runs the JavaScript build",
        );
        line(
            &format!("curl -si {l}/hello"),
            "x-hello-lang: javascript, javascript, rust",
        );
        line(
            &format!("curl -s -X POST {auth}{a}/admin/middleware/hello-py/rollback"),
            "back to the Python version",
        );
        line(&format!("curl -s {a}/admin/middleware"), "what runs now, with digests");
    } else {
        println!(
            "\n(The polyglot chain and the hot swap need the JavaScript and Python components: \
             `make demo` builds them, or scripts/build-polyglot.sh.)"
        );
    }
    println!(
        "\nRun the first twice to see round-robin across the two echo targets (the `upstream` field);\n\
         Host `acme.demo.test` reaches route `tenants`; a path no route matches gets a 404. Ctrl-C stops."
    );
    server.run_forever()
}

/// One command the demo suggests, with what it shows.
fn line(command: &str, shows: &str) {
    println!("  {command}\n      # {shows}");
}
