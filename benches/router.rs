//! Route lookup cost, per request, for route tables of growing size.
//!
//! `cargo bench --bench router`. The table is built at load; this measures only `Router::route`.

use std::hint::black_box;
use std::path::Path;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use http::Method;
use sluice::router::{RouteMatch, Router};

/// A config with `n` routes: a third exact hosts, a third wildcards, a third host-less.
fn table(n: usize) -> Router {
    let mut src = String::from("[upstreams.u]\ntargets = [\"127.0.0.1:1\"]\n");
    for i in 0..n {
        let host = match i % 3 {
            0 => format!("host = \"api{i}.example.com\"\n"),
            1 => format!("host = \"*.t{i}.example.com\"\n"),
            _ => String::new(),
        };
        src.push_str(&format!(
            "[[route]]\nname = \"r{i}\"\n{host}path-prefix = \"/svc{i}/v1\"\nmethods = [\"GET\", \"POST\"]\nupstream = \"u\"\n"
        ));
    }
    let config = sluice::config::parse(&src, Path::new("bench.toml")).expect("bench config is valid");
    Router::build(&config.routes)
}

fn route_lookup(c: &mut Criterion) {
    let mut group = c.benchmark_group("route");
    for n in [10, 100, 1000] {
        let router = table(n);
        let last = n - 1;
        let (host, path) = (
            format!("x.t{}.example.com", last - last % 3 + 1),
            format!("/svc{}/v1/items/42", last),
        );
        // A host-less route near the end of the table: the slowest lookup that still matches.
        let tail = format!("/svc{}/v1/items/42", (0..n).rev().find(|i| i % 3 == 2).unwrap());
        assert!(matches!(
            router.route(Some("nobody.test"), &tail, &Method::GET),
            RouteMatch::Found(_)
        ));
        group.bench_with_input(BenchmarkId::new("hostless-match", n), &n, |b, _| {
            b.iter(|| {
                router.route(
                    black_box(Some("nobody.test")),
                    black_box(&tail),
                    black_box(&Method::GET),
                )
            })
        });
        group.bench_with_input(BenchmarkId::new("wildcard-host", n), &n, |b, _| {
            b.iter(|| router.route(black_box(Some(&host)), black_box(&path), black_box(&Method::GET)))
        });
        group.bench_with_input(BenchmarkId::new("not-found", n), &n, |b, _| {
            b.iter(|| {
                router.route(
                    black_box(Some("nobody.test")),
                    black_box("/nothing/here"),
                    black_box(&Method::GET),
                )
            })
        });
    }
    group.finish();
}

criterion_group!(benches, route_lookup);
criterion_main!(benches);
