//! What deserialization cannot check: references between sections, duplicates, empty lists,
//! ranges. Value checks stay here rather than in the value types when failing the whole section
//! would hide the section's other problems (`tests/ui/many-errors.toml`).

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use super::parse::{Declared, valid_name};
use super::{
    BUILTIN_MIDDLEWARE, ByteSize, ComponentRef, Config, ConfigError, HostPattern, Instances, Locator, MiddlewareConfig,
    RouteConfig, StateBackend,
};

/// Checks what deserialization cannot: references, duplicates, empty lists, ranges.
pub(super) fn validate(config: &Config, declared: &Declared, loc: &Locator<'_>, errors: &mut Vec<ConfigError>) {
    let mut err = |span: std::ops::Range<usize>, msg: String| errors.push(loc.error(Some(span), msg));

    let server = &config.server;
    if server.listen.get_ref().is_empty() && server.tls.is_empty() {
        err(
            server.listen.span(),
            "`listen` needs at least one address, unless `tls` names the listeners".into(),
        );
    }
    let mut seen_listen = HashMap::new();
    for addr in server.listen.get_ref() {
        if seen_listen.insert(addr.get_ref().0, ()).is_some() {
            err(
                addr.span(),
                format!("listen address `{}` is given twice", addr.get_ref()),
            );
        }
    }
    if !(1..=1024).contains(server.threads.get_ref()) {
        err(
            server.threads.span(),
            format!(
                "`threads` must be between 1 and 1024, not `{}`",
                server.threads.get_ref()
            ),
        );
    }

    if *server.max_in_flight.get_ref() == 0 {
        err(
            server.max_in_flight.span(),
            "`max-in-flight` must be at least 1: with 0, every request would be refused".into(),
        );
    }

    if let Some(otlp) = &server.otlp {
        let otlp = otlp.get_ref();
        let endpoint = otlp.endpoint.get_ref();
        if !endpoint.starts_with("http://") || endpoint.parse::<http::Uri>().is_err() {
            err(
                otlp.endpoint.span(),
                format!(
                    "invalid otlp endpoint `{endpoint}`; expected the collector's traces URL over plain HTTP, e.g. `http://127.0.0.1:4318/v1/traces`"
                ),
            );
        }
        if !(0.0..=1.0).contains(otlp.sample_ratio.get_ref()) {
            err(
                otlp.sample_ratio.span(),
                format!(
                    "`sample-ratio` must be between 0 and 1, not `{}`",
                    otlp.sample_ratio.get_ref()
                ),
            );
        }
    }

    match (config.state.backend.get_ref(), &config.state.url) {
        (StateBackend::Redis, None) => err(
            config.state.backend.span(),
            "`backend = \"redis\"` needs a `url`, e.g. `redis://127.0.0.1:6379/0`".into(),
        ),
        (StateBackend::Redis, Some(url))
            if !(url.get_ref().starts_with("redis://") || url.get_ref().starts_with("rediss://")) =>
        {
            err(
                url.span(),
                format!("invalid redis url `{}`; expected `redis://host:port/db`", url.get_ref()),
            )
        }
        (StateBackend::Memory, Some(url)) => err(url.span(), "`url` is only used with `backend = \"redis\"`".into()),
        _ => {}
    }

    for upstream in config.upstreams.values() {
        if upstream.targets.get_ref().is_empty() {
            err(
                upstream.targets.span(),
                "`targets` needs at least one `host:port`".into(),
            );
        }
        if let Some(check) = &upstream.health_check {
            let check = check.get_ref();
            let path = check.path.get_ref();
            if !path.starts_with('/') || path.bytes().any(|b| b.is_ascii_whitespace() || b.is_ascii_control()) {
                err(
                    check.path.span(),
                    format!("invalid health-check path `{path}`; it must start with `/` and hold no spaces"),
                );
            }
            for (count, key) in [(&check.healthy, "healthy"), (&check.unhealthy, "unhealthy")] {
                if !(1..=1000).contains(count.get_ref()) {
                    err(
                        count.span(),
                        format!(
                            "health-check `{key}` must be between 1 and 1000, not `{}`",
                            count.get_ref()
                        ),
                    );
                }
            }
        }
    }

    for host in &config.registries.insecure {
        let text = host.get_ref();
        if text.is_empty() || text.contains(['/', ' ']) {
            err(
                host.span(),
                format!("`insecure` lists registries as `HOST[:PORT]` (no scheme, no path), not `{text}`"),
            );
        }
    }

    let base = config.path.parent().unwrap_or(Path::new(""));
    for mw in config.middleware.values() {
        for component in components_of(mw) {
            if let Err(msg) = check_component_ref(component.get_ref(), base) {
                err(component.span(), msg);
            }
        }
        if mw.memory_limit.0 > crate::runtime::MAX_MEMORY {
            err(
                mw.component.span(),
                format!(
                    "`memory-limit` is at most {}, not {}",
                    ByteSize(crate::runtime::MAX_MEMORY),
                    mw.memory_limit
                ),
            );
        }
        if let Some(poll) = &mw.poll {
            let follows_a_tag =
                components_of(mw).any(|c| matches!(c.get_ref(), ComponentRef::Oci(r) if r.digest().is_none()));
            if !follows_a_tag {
                err(
                    poll.span(),
                    "`poll` follows an OCI tag: it needs `component` (or `canary.component`) = \"oci://HOST/REPOSITORY:TAG\"; a file is watched and a digest never moves".into(),
                );
            }
            if poll.get_ref().0 < std::time::Duration::from_secs(1) {
                err(poll.span(), "`poll` must be at least 1s".into());
            }
        }
        if let Some(reuse) = &mw.reuse {
            if mw.instances == Instances::Fresh {
                err(
                    reuse.span(),
                    "`reuse` bounds a reused instance's life, and `instances = \"fresh\"` reuses none: remove one of them".into(),
                );
            }
            if reuse.get_ref().max_requests == 0 {
                err(reuse.span(), "`reuse.max-requests` must be at least 1".into());
            }
            if let Some(max) = reuse.get_ref().max_memory
                && max.0 > mw.memory_limit.0
            {
                err(
                    reuse.span(),
                    format!(
                        "`reuse.max-memory` ({max}) is over `memory-limit` ({}): an instance never grows that far",
                        mw.memory_limit
                    ),
                );
            }
        }
    }

    let mut names: HashMap<&str, usize> = HashMap::new();
    let mut matchers: HashMap<(Option<&HostPattern>, &str), Vec<&RouteConfig>> = HashMap::new();
    for route in &config.routes {
        let name = route.name.get_ref();
        if !valid_name(name) {
            err(
                route.name.span(),
                format!("invalid route name `{name}`; use letters, digits, `-` and `_`"),
            );
        }
        if let Some(first_line) = names.insert(name, line_of(loc, route.name.span())) {
            err(
                route.name.span(),
                format!("duplicate route name `{name}` (first used on line {first_line})"),
            );
        }
        if !declared.upstreams.contains(route.upstream.get_ref()) {
            err(
                route.upstream.span(),
                format!(
                    "route `{name}` names unknown upstream `{}`{}",
                    route.upstream.get_ref(),
                    known(&declared.upstreams)
                ),
            );
        }
        let mut chain = HashMap::new();
        for mw in &route.middleware {
            if !declared.middleware.contains(mw.get_ref()) {
                err(
                    mw.span(),
                    format!(
                        "route `{name}` names unknown middleware `{}`{}",
                        mw.get_ref(),
                        known(&declared.middleware)
                    ),
                );
            }
            if chain.insert(mw.get_ref(), ()).is_some() {
                err(
                    mw.span(),
                    format!("route `{name}` lists middleware `{}` twice", mw.get_ref()),
                );
            }
        }
        if let Some(methods) = &route.methods
            && methods.get_ref().is_empty()
        {
            err(
                methods.span(),
                format!("route `{name}` has an empty `methods` list; leave it out to match any method"),
            );
        }
        let key = (
            route.host.as_ref().map(|h| h.get_ref()),
            route.path_prefix.get_ref().0.as_str(),
        );
        let same = matchers.entry(key).or_default();
        if let Some(earlier) = same.iter().find(|other| methods_overlap(other, route)) {
            err(
                route.name.span(),
                format!(
                    "route `{name}` can never match: route `{}` has the same host, path-prefix and methods and comes first",
                    earlier.name.get_ref()
                ),
            );
        }
        same.push(route);
    }
}

/// A middleware's component and its canary's.
fn components_of(mw: &MiddlewareConfig) -> impl Iterator<Item = &toml::Spanned<ComponentRef>> {
    std::iter::once(&mw.component).chain(mw.canary.as_ref().map(|c| &c.component))
}

fn check_component_ref(component: &ComponentRef, base: &Path) -> Result<(), String> {
    match component {
        ComponentRef::Oci(_) => Ok(()),
        ComponentRef::Builtin(name) if BUILTIN_MIDDLEWARE.contains(&name.as_str()) => Ok(()),
        ComponentRef::Builtin(_) => {
            let available = if BUILTIN_MIDDLEWARE.is_empty() {
                "none in this build".to_owned()
            } else {
                BUILTIN_MIDDLEWARE.join(", ")
            };
            Err(format!(
                "unknown built-in middleware `{component}` (available: {available})"
            ))
        }
        ComponentRef::File(file) => {
            let path = base.join(file);
            if !path.is_file() {
                return Err(format!("component file `{}` does not exist", path.display()));
            }
            Ok(())
        }
    }
}

fn methods_overlap(a: &RouteConfig, b: &RouteConfig) -> bool {
    match (&a.methods, &b.methods) {
        (Some(a), Some(b)) => a
            .get_ref()
            .iter()
            .any(|m| b.get_ref().iter().any(|n| m.get_ref() == n.get_ref())),
        _ => true,
    }
}

fn known(names: &BTreeSet<String>) -> String {
    let names: Vec<String> = names.iter().map(|n| format!("`{n}`")).collect();
    if names.is_empty() {
        " (none are defined)".to_owned()
    } else {
        format!(" (defined: {})", names.join(", "))
    }
}

fn line_of(loc: &Locator<'_>, span: std::ops::Range<usize>) -> usize {
    loc.error_with_key(span, String::new(), "").line
}
