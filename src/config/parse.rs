//! Reading a config file: each section deserialized on its own, so one bad section does not hide
//! the errors in the next; then [`super::validate`].

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::de::DeserializeOwned;
use toml::Spanned;
use toml::de::{DeTable, DeValue, ValueDeserializer};

use super::validate::validate;
use super::{Config, ConfigError, ConfigErrors, Locator, ServerConfig, StateConfig};

/// Reads, parses and validates the config file at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let source = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: path.to_owned(),
            line: 1,
            column: 1,
            key: String::new(),
            message: format!("cannot read config file: {e}"),
            middleware: None,
        }])
    })?;
    parse(&source, path)
}

/// Parses and validates config `source`, read from `path` (used in messages and to resolve
/// relative paths).
pub fn parse(source: &str, path: &Path) -> Result<Config, ConfigErrors> {
    let (doc, syntax_errors) = DeTable::parse_recoverable(source);
    let loc = Locator::new(path, source, Some(doc.get_ref()));
    if !syntax_errors.is_empty() {
        // Errors after the first are mostly the parser's recovery; the partial tree is enough to
        // name the key of the first, not to trust any values.
        let first = &syntax_errors[0];
        return Err(ConfigErrors(vec![loc.error(first.span(), first.message())]));
    }
    let mut errors = Vec::new();
    let mut declared = Declared::default();
    let mut config = Config {
        path: path.to_owned(),
        source: source.to_owned(),
        server: ServerConfig::default(),
        state: StateConfig::default(),
        upstreams: BTreeMap::new(),
        middleware: BTreeMap::new(),
        routes: Vec::new(),
        registries: Default::default(),
        trust: Default::default(),
    };

    for (key, value) in doc.get_ref().iter() {
        match key.get_ref().as_ref() {
            "server" => {
                if let Some(mut server) = section::<ServerConfig>(&loc, value, &mut errors) {
                    // The default plain listener is only for a config that names no listener:
                    // with TLS listeners and no `listen`, sluice serves HTTPS only.
                    if server.listen.span() == (0..0) && !server.tls.is_empty() {
                        server.listen = Spanned::new(0..0, Vec::new());
                    }
                    config.server = server;
                }
            }
            "state" => {
                if let Some(state) = section(&loc, value, &mut errors) {
                    config.state = state;
                }
            }
            "upstreams" => {
                config.upstreams = named_sections(&loc, "upstreams", value, &mut declared.upstreams, &mut errors)
            }
            "middleware" => {
                config.middleware = named_sections(&loc, "middleware", value, &mut declared.middleware, &mut errors)
            }
            "registries" => {
                if let Some(registries) = section(&loc, value, &mut errors) {
                    config.registries = registries;
                }
            }
            "trust" => {
                if let Some(trust) = section(&loc, value, &mut errors) {
                    config.trust = trust;
                }
            }
            "route" => match value.get_ref() {
                DeValue::Array(items) => {
                    config.routes = items
                        .iter()
                        .filter_map(|item| section(&loc, item, &mut errors))
                        .collect();
                }
                _ => errors.push(loc.error(
                    Some(value.span()),
                    "routes are an array of tables: write each one under a `[[route]]` header",
                )),
            },
            other => errors.push(loc.error(
                Some(key.span()),
                format!(
                    "unknown section `{other}`; expected one of `server`, `state`, `upstreams`, `middleware`, `route`, `registries`, `trust`"
                ),
            )),
        }
    }

    validate(&config, &declared, &loc, &mut errors);
    if errors.is_empty() {
        Ok(config)
    } else {
        errors.sort_by_key(|e| (e.line, e.column));
        Err(ConfigErrors(errors))
    }
}

/// Deserializes one section on its own, recording its error instead of stopping.
fn section<T: DeserializeOwned>(
    loc: &Locator<'_>,
    value: &Spanned<DeValue<'_>>,
    errors: &mut Vec<ConfigError>,
) -> Option<T> {
    T::deserialize(ValueDeserializer::from(value.clone()))
        .map_err(|e| errors.push(loc.error(e.span(), e.message())))
        .ok()
}

/// Every name a `[upstreams.NAME]` or `[middleware.NAME]` header declares, including sections
/// that failed to parse, so a broken section does not also make every reference to it dangle.
#[derive(Default)]
pub(super) struct Declared {
    pub(super) upstreams: BTreeSet<String>,
    pub(super) middleware: BTreeSet<String>,
}

/// Deserializes `[kind.NAME]` tables, each on its own.
fn named_sections<T: DeserializeOwned>(
    loc: &Locator<'_>,
    kind: &str,
    value: &Spanned<DeValue<'_>>,
    declared: &mut BTreeSet<String>,
    errors: &mut Vec<ConfigError>,
) -> BTreeMap<String, T> {
    let DeValue::Table(table) = value.get_ref() else {
        errors.push(loc.error(
            Some(value.span()),
            format!("`{kind}` is a table of named sections, e.g. `[{kind}.NAME]`"),
        ));
        return BTreeMap::new();
    };
    let mut out = BTreeMap::new();
    for (name, value) in table.iter() {
        declared.insert(name.get_ref().to_string());
        if !valid_name(name.get_ref()) {
            errors.push(loc.error(
                Some(name.span()),
                format!("invalid name `{}`; use letters, digits, `-` and `_`", name.get_ref()),
            ));
        }
        if let Some(section) = section(loc, value, errors) {
            out.insert(name.get_ref().to_string(), section);
        }
    }
    out
}

pub(super) fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}
