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
    /// WASI 0.3's `wasi:http/service` or `wasi:http/middleware`: exports `wasi:http/handler`.
    Handler,
}

impl HttpWorld {
    /// The world a component with these top-level `exports` implements, if it is one of these.
    pub fn of(exports: &[String]) -> Option<HttpWorld> {
        if exports.iter().any(|name| name == "init") {
            return None;
        }
        exports.iter().find_map(|name| {
            if name.starts_with("wasi:http/incoming-handler@0.2") {
                Some(HttpWorld::Proxy)
            } else if name.starts_with("wasi:http/handler@0.3") {
                Some(HttpWorld::Handler)
            } else {
                None
            }
        })
    }

    /// The world and the export that tells it, for messages.
    pub fn describe(self) -> &'static str {
        match self {
            HttpWorld::Proxy => {
                "a standard `wasi:http/proxy` component (WASI 0.2: it exports `wasi:http/incoming-handler`)"
            }
            HttpWorld::Handler => {
                "a standard `wasi:http` 0.3 component (the `service` or `middleware` world: it exports `wasi:http/handler`)"
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
    fn standard_http_worlds_are_told_by_their_exports() {
        let proxy = names(&["wasi:http/incoming-handler@0.2.6"]);
        assert_eq!(HttpWorld::of(&proxy), Some(HttpWorld::Proxy));
        let middleware = names(&["wasi:http/handler@0.3.0"]);
        assert_eq!(HttpWorld::of(&middleware), Some(HttpWorld::Handler));
        let rc = names(&["wasi:http/handler@0.3.0-rc-2025-09-16"]);
        assert_eq!(HttpWorld::of(&rc), Some(HttpWorld::Handler));
        // A sluice-world component is one, whatever else it exports.
        let sluice = names(&["init", "on-request-headers", "wasi:http/incoming-handler@0.2.6"]);
        assert_eq!(HttpWorld::of(&sluice), None);
        assert_eq!(HttpWorld::of(&names(&["greet"])), None);
    }
}
