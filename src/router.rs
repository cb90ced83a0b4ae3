//! The route table: built once per config load, consulted once per request.
//!
//! Precedence, most specific first:
//! 1. the host: an exact host beats the longest matching `*.suffix` wildcard, which beats routes
//!    with no host;
//! 2. then the longest `path-prefix` (a plain string prefix of the path, as in Envoy and Kong);
//! 3. then the method list: a route with `methods` matches only those methods.
//!
//! The first route in that order whose host, prefix and methods all match wins. When routes match
//! the host and path but none allows the method, the answer is 405 with `Allow` listing the methods
//! those routes accept. When nothing matches the host and path, the answer is 404.

use ahash::AHashMap as HashMap;

use http::Method;

use crate::config::{HostPattern, RouteConfig};

/// The result of routing one request.
#[derive(Debug, PartialEq, Eq)]
pub enum RouteMatch {
    /// The index of the route that serves the request.
    Found(usize),
    /// Routes match the host and path, but none allows the method; `allow` is the `Allow` value.
    MethodNotAllowed {
        /// Comma-separated methods, for the `Allow` header.
        allow: String,
    },
    /// No route matches the host and path.
    NotFound,
}

/// Routes grouped by host specificity, each group sorted by prefix length, longest first.
#[derive(Debug, Default)]
pub struct Router {
    exact: HashMap<String, Vec<Entry>>,
    /// By wildcard suffix (`.example.com`); a host's own suffixes are looked up, longest first.
    wildcard: HashMap<String, Vec<Entry>>,
    any_host: Vec<Entry>,
}

#[derive(Debug)]
struct Entry {
    prefix: String,
    methods: Option<Vec<Method>>,
    route: usize,
}

impl Router {
    /// Builds the table from routes in config order; `Found(i)` refers to `routes[i]`.
    pub fn build(routes: &[RouteConfig]) -> Router {
        let mut router = Router::default();
        for (index, route) in routes.iter().enumerate() {
            let entry = Entry {
                prefix: route.path_prefix.get_ref().0.clone(),
                methods: route
                    .methods
                    .as_ref()
                    .map(|ms| ms.get_ref().iter().map(|m| m.get_ref().0.clone()).collect()),
                route: index,
            };
            let group = match route.host.as_ref().map(|h| h.get_ref()) {
                Some(HostPattern::Exact(host)) => router.exact.entry(host.clone()).or_default(),
                Some(HostPattern::Wildcard(suffix)) => router.wildcard.entry(suffix.clone()).or_default(),
                None => &mut router.any_host,
            };
            group.push(entry);
        }
        // Stable sorts keep config order among equal prefixes.
        let by_prefix = |group: &mut Vec<Entry>| group.sort_by_key(|e| std::cmp::Reverse(e.prefix.len()));
        router.exact.values_mut().for_each(by_prefix);
        router.wildcard.values_mut().for_each(by_prefix);
        by_prefix(&mut router.any_host);
        router
    }

    /// Picks the route for a request. `host` is the request's host without port, lower case.
    pub fn route(&self, host: Option<&str>, path: &str, method: &Method) -> RouteMatch {
        let mut allowed: Vec<&Method> = Vec::new();
        let mut path_matched = false;
        for group in self.groups_for(host) {
            for entry in group.iter().filter(|e| path.starts_with(e.prefix.as_str())) {
                path_matched = true;
                match &entry.methods {
                    None => return RouteMatch::Found(entry.route),
                    Some(methods) if methods.contains(method) => return RouteMatch::Found(entry.route),
                    Some(methods) => allowed.extend(methods.iter()),
                }
            }
        }
        if !path_matched {
            return RouteMatch::NotFound;
        }
        let mut names: Vec<&str> = allowed.iter().map(|m| m.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        RouteMatch::MethodNotAllowed {
            allow: names.join(", "),
        }
    }

    /// The route groups that apply to `host`, most specific first.
    fn groups_for<'a>(&'a self, host: Option<&'a str>) -> impl Iterator<Item = &'a Vec<Entry>> + 'a {
        let exact = host.and_then(|h| self.exact.get(h));
        // `a.b.example.com` → `.b.example.com`, `.example.com`, `.com`: longest suffix first, and
        // never the whole host (a wildcard needs at least one label in front).
        let suffixes = host
            .filter(|_| !self.wildcard.is_empty())
            .into_iter()
            .flat_map(|h| h.match_indices('.').filter(|&(i, _)| i > 0).map(move |(i, _)| &h[i..]));
        let wildcards = suffixes.filter_map(|suffix| self.wildcard.get(suffix));
        exact
            .into_iter()
            .chain(wildcards)
            .chain(std::iter::once(&self.any_host))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn router(routes: &str) -> Router {
        let src = format!("[upstreams.u]\ntargets = [\"127.0.0.1:1\"]\n{routes}");
        let config = crate::config::parse(&src, Path::new("t.toml")).unwrap();
        Router::build(&config.routes)
    }

    #[test]
    fn exact_host_beats_wildcard_beats_none_then_longest_prefix() {
        let r = router(
            r#"
            [[route]]
            name = "any"
            upstream = "u"
            [[route]]
            name = "any-api"
            path-prefix = "/api"
            upstream = "u"
            [[route]]
            name = "wild"
            host = "*.example.com"
            upstream = "u"
            [[route]]
            name = "deep-wild"
            host = "*.eu.example.com"
            upstream = "u"
            [[route]]
            name = "exact"
            host = "api.example.com"
            path-prefix = "/v1"
            upstream = "u"
            "#,
        );
        let get = Method::GET;
        assert_eq!(r.route(Some("api.example.com"), "/v1/x", &get), RouteMatch::Found(4));
        // The exact host's only route does not match this path: fall through to the wildcard.
        assert_eq!(r.route(Some("api.example.com"), "/api", &get), RouteMatch::Found(2));
        assert_eq!(r.route(Some("x.eu.example.com"), "/", &get), RouteMatch::Found(3));
        assert_eq!(r.route(Some("example.com"), "/api/x", &get), RouteMatch::Found(1));
        assert_eq!(r.route(None, "/other", &get), RouteMatch::Found(0));
    }

    #[test]
    fn methods_pick_between_routes_and_otherwise_405() {
        let r = router(
            r#"
            [[route]]
            name = "read"
            path-prefix = "/users"
            methods = ["GET", "HEAD"]
            upstream = "u"
            [[route]]
            name = "write"
            path-prefix = "/users"
            methods = ["POST"]
            upstream = "u"
            "#,
        );
        assert_eq!(r.route(None, "/users/1", &Method::GET), RouteMatch::Found(0));
        assert_eq!(r.route(None, "/users/1", &Method::POST), RouteMatch::Found(1));
        assert_eq!(
            r.route(None, "/users/1", &Method::DELETE),
            RouteMatch::MethodNotAllowed {
                allow: "GET, HEAD, POST".into()
            }
        );
        assert_eq!(r.route(None, "/orders", &Method::GET), RouteMatch::NotFound);
    }
}
