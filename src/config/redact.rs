//! What the admin API shows of a config: the file as loaded, with every secret in it replaced by
//! `"<redacted>"` (comments, order and layout kept, so it still reads as the file it came from).
//!
//! Secret are the values of keys that name one (`secret`, `password`, `token`, `api-key`,
//! `client-secret`, … and any key containing `secret`, `password` or `token`, except the `*-env`
//! and `*-file` keys, which only say where a secret is), the private and symmetric members of a
//! JWK (`k`, `d`, `p`, `q`, `dp`, `dq`, `qi`) wherever they appear, also inside a `jwks` given as
//! JSON text, and the password of any URL (`redis://user:PASSWORD@host`).

use toml_edit::{DocumentMut, Item, Value};

/// What replaces a secret.
pub const REDACTED: &str = "<redacted>";

/// `source` (a config file's text) with its secrets replaced; if it does not parse, a note saying
/// so instead (never the text itself).
pub fn redact_secrets(source: &str) -> String {
    match source.parse::<DocumentMut>() {
        Ok(mut doc) => {
            redact_table(doc.as_table_mut());
            doc.to_string()
        }
        Err(_) => "# the config does not parse as TOML; not shown (it may hold secrets)\n".to_owned(),
    }
}

fn is_secret_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    if key.ends_with("-env") || key.ends_with("-file") {
        return false;
    }
    matches!(
        key.as_str(),
        "k" | "d" | "p" | "q" | "dp" | "dq" | "qi" | "api-key" | "apikey" | "private-key" | "credentials"
    ) || ["secret", "password", "passwd", "token"]
        .iter()
        .any(|word| key.contains(word))
}

fn redact_table(table: &mut dyn toml_edit::TableLike) {
    for (key, item) in table.iter_mut() {
        let secret = is_secret_key(key.get());
        let jwks = key.get() == "jwks";
        redact_item(item, secret, jwks);
    }
}

fn redact_item(item: &mut Item, secret: bool, jwks: bool) {
    match item {
        Item::Value(value) => redact_value(value, secret, jwks),
        Item::Table(table) => redact_table(table),
        Item::ArrayOfTables(tables) => tables.iter_mut().for_each(|t| redact_table(t)),
        Item::None => {}
    }
}

fn redact_value(value: &mut Value, secret: bool, jwks: bool) {
    match value {
        _ if secret => *value = replaced(value, REDACTED.to_owned()),
        Value::String(s) => {
            let text = s.value();
            let redacted = if jwks { redact_json(text) } else { redact_url(text) };
            if let Some(redacted) = redacted {
                *value = replaced(value, redacted);
            }
        }
        Value::InlineTable(table) => redact_table(table),
        Value::Array(array) => array.iter_mut().for_each(|v| redact_value(v, false, jwks)),
        _ => {}
    }
}

/// A string value `text` with the decoration (spacing, trailing comment) of `old`.
fn replaced(old: &Value, text: String) -> Value {
    let mut new = Value::from(text);
    *new.decor_mut() = old.decor().clone();
    new
}

/// `url` with the password of its userinfo replaced, if it has one.
fn redact_url(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let at = rest[..authority_end].rfind('@')?;
    let (user, password) = rest[..at].split_once(':')?;
    (!password.is_empty()).then(|| format!("{scheme}://{user}:{REDACTED}{}", &rest[at..]))
}

/// A JWK set given as JSON text, with its secret members replaced.
fn redact_json(text: &str) -> Option<String> {
    fn walk(value: &mut serde_json::Value) -> bool {
        let mut changed = false;
        match value {
            serde_json::Value::Object(map) => {
                for (key, member) in map.iter_mut() {
                    if is_secret_key(key) {
                        *member = serde_json::Value::String(REDACTED.to_owned());
                        changed = true;
                    } else {
                        changed |= walk(member);
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(|v| changed |= walk(v)),
            _ => {}
        }
        changed
    }
    let mut json: serde_json::Value = serde_json::from_str(text).ok()?;
    walk(&mut json).then(|| json.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_go_and_the_rest_stays_as_written() {
        let source = r#"# the shared config
[state]
backend = "redis"
url = "redis://sluice:hunter2@10.0.0.5:6379/0"   # primary

[server]
admin-token-env = "SLUICE_ADMIN_TOKEN"

[middleware.jwt]
component = "builtin:auth-jwt"
config = { algorithms = ["HS256"], secret = "s3cr3t-hmac", jwks = '{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}', public-key-file = "k.pem" }

[middleware.api.config]
api-key = "abc"
upstream-url = "https://user@example.com/x"
nested = { client-secret = "x", keys = [{ kty = "RSA", n = "AQAB", d = "private" }] }
"#;
        let shown = redact_secrets(source);
        for secret in [
            "hunter2",
            "s3cr3t-hmac",
            "c2VjcmV0",
            "\"abc\"",
            "client-secret = \"x\"",
            "private",
        ] {
            assert!(!shown.contains(secret), "`{secret}` shown:\n{shown}");
        }
        for kept in [
            "# the shared config",
            "url = \"redis://sluice:<redacted>@10.0.0.5:6379/0\"   # primary",
            "admin-token-env = \"SLUICE_ADMIN_TOKEN\"",
            "public-key-file = \"k.pem\"",
            "upstream-url = \"https://user@example.com/x\"",
            "n = \"AQAB\"",
            "\"kty\":\"oct\"",
        ] {
            assert!(shown.contains(kept), "`{kept}` lost:\n{shown}");
        }
        shown.parse::<DocumentMut>().expect("still TOML");
    }

    #[test]
    fn a_config_without_secrets_is_shown_unchanged() {
        let source = "[server]\nlisten = [\"127.0.0.1:8080\"]  # front\n\n[[route]]\nname = \"r\"\nupstream = \"u\"\n";
        assert_eq!(redact_secrets(source), source);
    }
}
