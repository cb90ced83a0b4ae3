//! What a component is, told from the names it imports and exports at its top level, without
//! compiling it: the names an artifact's config lists (`sluice push`), and the standard world of a
//! component that is not a `sluice:middleware` one, so that load can say what it is.

use wasmparser::{Parser, Payload};

/// The names a component imports and exports (its top level); an error if `bytes` is not a
/// component.
pub fn interface(bytes: &[u8]) -> Result<(Vec<String>, Vec<String>), String> {
    if !Parser::is_component(bytes) {
        return Err("not a WebAssembly component (a core module, or not Wasm at all)".to_owned());
    }
    let (mut imports, mut exports, mut depth) = (Vec::new(), Vec::new(), 0usize);
    for payload in Parser::new(0).parse_all(bytes) {
        match payload.map_err(|e| format!("not a valid component: {e}"))? {
            Payload::ModuleSection { .. } | Payload::ComponentSection { .. } => depth += 1,
            Payload::End(_) => depth = depth.saturating_sub(1),
            Payload::ComponentImportSection(section) if depth == 0 => {
                for import in section {
                    imports.push(import.map_err(|e| e.to_string())?.name.name.to_owned());
                }
            }
            Payload::ComponentExportSection(section) if depth == 0 => {
                for export in section {
                    exports.push(export.map_err(|e| e.to_string())?.name.name.to_owned());
                }
            }
            _ => {}
        }
    }
    Ok((imports, exports))
}

/// A standard `wasi:http` world: what a component exporting a `wasi:http` handler and no `init`
/// implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpWorld {
    /// WASI 0.2's `wasi:http/proxy`: exports `wasi:http/incoming-handler`.
    Proxy,
    /// WASI 0.3's `wasi:http/service`: exports `wasi:http/handler`.
    Service,
    /// WASI 0.3's `wasi:http/middleware`: exports `wasi:http/handler` and imports one, the next hop.
    Middleware,
}

impl HttpWorld {
    /// The world a component with these top-level `imports` and `exports` implements, if it is one
    /// of these.
    pub fn of(imports: &[String], exports: &[String]) -> Option<HttpWorld> {
        const HANDLER: &str = "wasi:http/handler@0.3";
        if exports.iter().any(|name| name == "init") {
            return None;
        }
        if exports
            .iter()
            .any(|name| name.starts_with("wasi:http/incoming-handler@0.2"))
        {
            Some(HttpWorld::Proxy)
        } else if exports.iter().any(|name| name.starts_with(HANDLER)) {
            if imports.iter().any(|name| name.starts_with(HANDLER)) {
                Some(HttpWorld::Middleware)
            } else {
                Some(HttpWorld::Service)
            }
        } else {
            None
        }
    }

    /// The world and the names that tell it, for messages.
    pub fn describe(self) -> &'static str {
        match self {
            HttpWorld::Proxy => {
                "a standard `wasi:http/proxy` component (WASI 0.2: it exports `wasi:http/incoming-handler`)"
            }
            HttpWorld::Service => "a standard `wasi:http/service` component (WASI 0.3: it exports `wasi:http/handler`)",
            HttpWorld::Middleware => {
                "a standard `wasi:http/middleware` component (WASI 0.3: it exports `wasi:http/handler` and imports one, its next hop)"
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::HttpWorld;

    fn names(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn standard_http_worlds_are_told_by_their_exports_and_imports() {
        let none = names(&[]);
        let proxy = names(&["wasi:http/incoming-handler@0.2.6"]);
        assert_eq!(
            HttpWorld::of(&names(&["wasi:http/outgoing-handler@0.2.6"]), &proxy),
            Some(HttpWorld::Proxy)
        );
        let handler = names(&["wasi:http/handler@0.3.0"]);
        assert_eq!(
            HttpWorld::of(&names(&["wasi:http/client@0.3.0"]), &handler),
            Some(HttpWorld::Service)
        );
        assert_eq!(HttpWorld::of(&none, &handler), Some(HttpWorld::Service));
        assert_eq!(HttpWorld::of(&handler, &handler), Some(HttpWorld::Middleware));
        let rc = names(&["wasi:http/handler@0.3.0-rc-2025-09-16"]);
        assert_eq!(HttpWorld::of(&rc, &rc), Some(HttpWorld::Middleware));
        // A sluice-world component is one, whatever else it exports.
        let sluice = names(&["init", "on-request-headers", "wasi:http/incoming-handler@0.2.6"]);
        assert_eq!(HttpWorld::of(&none, &sluice), None);
        assert_eq!(HttpWorld::of(&none, &names(&["greet"])), None);
    }
}
