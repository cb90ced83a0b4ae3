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

fn main() -> ExitCode {
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
        Command::Demo { listen } => match logs_only() {
            Ok(()) => demo(listen),
            Err(code) => code,
        },
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

fn demo(listen: std::net::SocketAddr) -> ExitCode {
    let source = DEMO_CONFIG.replace("{{components}}", sluice::artifacts::COMPONENT_DIR);
    let mut config = match config::parse(&source, std::path::Path::new("demo.toml")) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("error: the embedded demo config is invalid:\n{e}");
            return ExitCode::FAILURE;
        }
    };
    config.server.listen = toml::Spanned::new(0..0, vec![toml::Spanned::new(0..0, ListenAddr(listen))]);
    config.server.cache_dir = Some(std::env::temp_dir().join("sluice-demo-cache"));
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
    let server = match sluice::server::build(config, Start::Fresh) {
        Ok(server) => server,
        Err(e) => return report(&e),
    };
    let upstreams: Vec<String> = echo_addrs.iter().map(|a| a.to_string()).collect();
    println!(
        "sluice demo: proxy on http://{listen}, echo upstream on {} (config: src/demo.toml)\n\
         \n\
         Try:\n  \
         curl -si http://{listen}/users/42                 # through middleware `block` and `tag`: see x-stamp-* on both sides\n  \
         curl -si -H 'x-block: 1' http://{listen}/users/42 # 403 from the `block` middleware; the upstream never sees it\n  \
         curl -si -X DELETE http://{listen}/users/42       # 405: route `users` allows GET and HEAD\n  \
         curl -si -d 'forbidden' http://{listen}/orders    # 422 from `guard`, which read the whole body first\n\
         \n\
         Run the first twice to see round-robin across the two echo targets (the `upstream` field);\n\
         Host `acme.demo.test` reaches route `tenants`; a path no route matches gets a 404. Ctrl-C stops.",
        upstreams.join(" and ")
    );
    server.run_forever()
}
