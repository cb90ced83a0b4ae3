//! Value types that validate while they parse: durations, sizes, addresses, host patterns.
//!
//! Each is a newtype with `#[serde(try_from = "String")]`, so a bad value is a deserialization
//! error carrying the value's span, and the rest of sluice only ever sees valid values.

use std::fmt;
use std::net::SocketAddr;

use serde::Deserialize;

/// A TOML string or integer, for values where a bare number deserves a precise message.
pub enum StringOrInt {
    /// A string.
    String(String),
    /// An integer.
    Int(i64),
}

impl<'de> Deserialize<'de> for StringOrInt {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = StringOrInt;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string with a unit, e.g. `\"30s\"` or `\"1MiB\"`")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<StringOrInt, E> {
                Ok(StringOrInt::String(v.to_owned()))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<StringOrInt, E> {
                Ok(StringOrInt::Int(v))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// A duration longer than zero, written with a unit: `"500ms"`, `"30s"`, `"1m"`, `"1h 30m"`. Every
/// timeout and interval is one: zero is refused where it is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "StringOrInt")]
pub struct Duration(pub std::time::Duration);

impl TryFrom<StringOrInt> for Duration {
    type Error = String;

    fn try_from(value: StringOrInt) -> Result<Self, String> {
        match value {
            StringOrInt::String(s) => Duration::try_from(s),
            // A bare number: refused by `AnyDuration` (no unit).
            number => AnyDuration::try_from(number).map(|AnyDuration(d)| Duration(d)),
        }
    }
}

impl TryFrom<String> for Duration {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        let AnyDuration(duration) = AnyDuration::try_from(s.clone())?;
        if duration.is_zero() {
            return Err(format!(
                "duration `{s}` is zero; a timeout or interval of zero would fail or spin: give one longer than `0s`"
            ));
        }
        Ok(Duration(duration))
    }
}

/// A duration that may be zero (`grace-period = "0s"`: do not wait), written as [`Duration`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "StringOrInt")]
pub struct AnyDuration(pub std::time::Duration);

impl TryFrom<StringOrInt> for AnyDuration {
    type Error = String;

    fn try_from(value: StringOrInt) -> Result<Self, String> {
        match value {
            StringOrInt::String(s) => AnyDuration::try_from(s),
            StringOrInt::Int(n) => Err(format!(
                "duration `{n}` has no unit; write it as a string, e.g. `\"{n}s\"` or `\"{n}ms\"`"
            )),
        }
    }
}

impl TryFrom<String> for AnyDuration {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        humantime::parse_duration(s.trim())
            .map(AnyDuration)
            .map_err(|e| format!("invalid duration `{s}` ({e}); write a number and a unit, e.g. `500ms`, `30s`, `1m`"))
    }
}

impl fmt::Display for AnyDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl Duration {
    /// A duration of `ms` milliseconds.
    pub const fn from_millis(ms: u64) -> Self {
        Duration(std::time::Duration::from_millis(ms))
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        AnyDuration(self.0).fmt(f)
    }
}

/// A size in bytes, written with a unit: `"64KiB"`, `"1MiB"`, `"10MB"`, or a plain byte count.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "StringOrInt")]
pub struct ByteSize(pub u64);

impl TryFrom<StringOrInt> for ByteSize {
    type Error = String;

    fn try_from(value: StringOrInt) -> Result<Self, String> {
        match value {
            StringOrInt::String(s) => ByteSize::try_from(s),
            StringOrInt::Int(n) => u64::try_from(n)
                .map(ByteSize)
                .map_err(|_| format!("invalid size `{n}`")),
        }
    }
}

impl TryFrom<String> for ByteSize {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        s.trim()
            .parse::<bytesize::ByteSize>()
            .map(|b| ByteSize(b.as_u64()))
            .map_err(|_| format!("invalid size `{s}`; write a number and a unit, e.g. `64KiB`, `1MiB`"))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", bytesize::ByteSize(self.0).display().iec())
    }
}

/// A local address to listen on: `"127.0.0.1:8080"`, `"[::1]:8080"`, `"0.0.0.0:80"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct ListenAddr(pub SocketAddr);

impl TryFrom<String> for ListenAddr {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        s.trim()
            .parse()
            .map(ListenAddr)
            .map_err(|_| format!("invalid listen address `{s}`; expected `ip:port`, e.g. `127.0.0.1:8080`"))
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// An upstream target: `"127.0.0.1:3000"`, `"[::1]:3000"` or `"users.internal:3000"`.
///
/// Host names are resolved once, when the config is loaded.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Target {
    /// The host part, without brackets for IPv6.
    pub host: String,
    /// The port.
    pub port: u16,
}

impl TryFrom<String> for Target {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        let bad = || format!("invalid target `{s}`; expected `host:port`, e.g. `127.0.0.1:3000`");
        if let Ok(addr) = s.parse::<SocketAddr>() {
            return Ok(Target {
                host: addr.ip().to_string(),
                port: addr.port(),
            });
        }
        let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
        let port: u16 = port.parse().map_err(|_| bad())?;
        let valid_host = !host.is_empty()
            && host
                .split('.')
                .all(|label| !label.is_empty() && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
        if !valid_host || port == 0 {
            return Err(bad());
        }
        Ok(Target {
            host: host.to_ascii_lowercase(),
            port,
        })
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// A route's host: an exact name (`"api.example.com"`) or a wildcard (`"*.example.com"`).
///
/// Matching ignores case and the port; a wildcard matches one or more labels in front of its
/// suffix (`*.example.com` matches `a.example.com` and `a.b.example.com`, not `example.com`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Deserialize)]
#[serde(try_from = "String")]
pub enum HostPattern {
    /// Matches exactly this name.
    Exact(String),
    /// Matches any name ending in this suffix, which starts with a dot (`.example.com`).
    Wildcard(String),
}

impl TryFrom<String> for HostPattern {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        let lower = s.trim().to_ascii_lowercase();
        let (wild, name) = match lower.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, lower.as_str()),
        };
        let valid = !name.is_empty()
            && name.split('.').all(|label| {
                !label.is_empty()
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            });
        if !valid {
            return Err(format!(
                "invalid host `{s}`; expected a host name (`api.example.com`) or a wildcard (`*.example.com`), without a port"
            ));
        }
        Ok(if wild {
            HostPattern::Wildcard(format!(".{name}"))
        } else {
            HostPattern::Exact(name.to_owned())
        })
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostPattern::Exact(h) => f.write_str(h),
            HostPattern::Wildcard(suffix) => write!(f, "*{suffix}"),
        }
    }
}

/// A share of requests, in percent: 0 to 100.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "i64")]
pub struct Percent(pub u8);

impl TryFrom<i64> for Percent {
    type Error = String;

    fn try_from(n: i64) -> Result<Self, String> {
        u8::try_from(n)
            .ok()
            .filter(|&n| n <= 100)
            .map(Percent)
            .ok_or_else(|| format!("`{n}` is not a percentage (0–100)"))
    }
}

/// `component`: a built-in (`"builtin:NAME"`), a component file (relative to the config file) or an
/// OCI artifact (`"oci://HOST/REPOSITORY:TAG"`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Deserialize)]
#[serde(try_from = "String")]
pub enum ComponentRef {
    /// One of the components built into sluice, by name.
    Builtin(String),
    /// A `.wasm` component file, as written (relative to the config file's directory).
    File(std::path::PathBuf),
    /// A component artifact in an OCI registry: `oci://HOST[:PORT]/REPOSITORY:TAG` or
    /// `…@sha256:DIGEST`.
    Oci(oci_client::Reference),
}

impl TryFrom<String> for ComponentRef {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        if s.is_empty() {
            return Err("`component` is empty; name a built-in (`builtin:NAME`) or a `.wasm` file".to_owned());
        }
        if let Some(name) = s.strip_prefix("builtin:") {
            return Ok(ComponentRef::Builtin(name.to_owned()));
        }
        let Some(reference) = s.strip_prefix("oci://") else {
            return Ok(ComponentRef::File(s.into()));
        };
        let expected = "expected `oci://HOST[:PORT]/REPOSITORY:TAG` or `oci://HOST[:PORT]/REPOSITORY@sha256:DIGEST`";
        let (host, rest) = reference.split_once('/').unwrap_or((reference, ""));
        // Without an explicit registry the reference parser would quietly pick Docker Hub.
        if !(host.contains(['.', ':']) || host == "localhost") || rest.is_empty() {
            return Err(format!(
                "invalid OCI reference `{s}`: name the registry host; {expected}"
            ));
        }
        let parsed: oci_client::Reference = reference
            .parse()
            .map_err(|e| format!("invalid OCI reference `{s}`: {e}; {expected}"))?;
        let explicit_tag = rest
            .rsplit_once('/')
            .map_or(rest, |(_, last)| last)
            .split('@')
            .next()
            .is_some_and(|name| name.contains(':'));
        if parsed.digest().is_none() && !explicit_tag {
            return Err(format!(
                "OCI reference `{s}` names no tag or digest; give one (`:TAG` or `@sha256:DIGEST`): sluice never assumes `latest`"
            ));
        }
        Ok(ComponentRef::Oci(parsed))
    }
}

impl fmt::Display for ComponentRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ComponentRef::Builtin(name) => write!(f, "builtin:{name}"),
            ComponentRef::File(path) => write!(f, "{}", path.display()),
            ComponentRef::Oci(reference) => write!(f, "oci://{}", reference.whole()),
        }
    }
}

/// A route's path prefix; starts with `/`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Deserialize)]
#[serde(try_from = "String")]
pub struct PathPrefix(pub String);

impl TryFrom<String> for PathPrefix {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        if !s.starts_with('/') || s.contains(['?', '#']) || s.bytes().any(|b| b.is_ascii_whitespace()) {
            return Err(format!(
                "invalid path-prefix `{s}`; it must start with `/` and hold no query, fragment or spaces"
            ));
        }
        Ok(PathPrefix(s))
    }
}

impl Default for PathPrefix {
    fn default() -> Self {
        PathPrefix("/".to_owned())
    }
}

/// An HTTP method name, upper case: `"GET"`, `"POST"`, or any extension token.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Deserialize)]
#[serde(try_from = "String")]
pub struct Method(pub http::Method);

impl TryFrom<String> for Method {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        let upper = s.trim().to_ascii_uppercase();
        if upper != s.trim() {
            return Err(format!(
                "invalid method `{s}`; methods are case-sensitive, write `{upper}`"
            ));
        }
        http::Method::from_bytes(upper.as_bytes())
            .map(Method)
            .map_err(|_| format!("invalid method `{s}`"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_need_a_unit() {
        assert_eq!(Duration::try_from("500ms".to_owned()).unwrap().0.as_millis(), 500);
        assert_eq!(Duration::try_from("30s".to_owned()).unwrap().0.as_secs(), 30);
        assert_eq!(Duration::try_from("1m 30s".to_owned()).unwrap().0.as_secs(), 90);
        assert!(
            Duration::try_from("30".to_owned())
                .unwrap_err()
                .contains("invalid duration `30`")
        );
        assert!(Duration::try_from("fast".to_owned()).is_err());
    }

    #[test]
    fn sizes_take_binary_and_decimal_units() {
        assert_eq!(ByteSize::try_from("1MiB".to_owned()).unwrap().0, 1 << 20);
        assert_eq!(ByteSize::try_from("64KiB".to_owned()).unwrap().0, 64 << 10);
        assert_eq!(ByteSize::try_from("10MB".to_owned()).unwrap().0, 10_000_000);
        assert!(ByteSize::try_from("lots".to_owned()).is_err());
    }

    #[test]
    fn targets_are_host_and_port() {
        let t = Target::try_from("Users.Internal:3000".to_owned()).unwrap();
        assert_eq!((t.host.as_str(), t.port), ("users.internal", 3000));
        assert_eq!(Target::try_from("[::1]:80".to_owned()).unwrap().to_string(), "[::1]:80");
        for bad in ["localhost", "host:", ":80", "a..b:80", "h:99999", "h:0", "http://h:80"] {
            assert!(Target::try_from(bad.to_owned()).is_err(), "{bad}");
        }
    }

    #[test]
    fn host_patterns() {
        assert_eq!(
            HostPattern::try_from("*.Example.com".to_owned()).unwrap(),
            HostPattern::Wildcard(".example.com".into())
        );
        assert_eq!(
            HostPattern::try_from("api.example.com".to_owned()).unwrap(),
            HostPattern::Exact("api.example.com".into())
        );
        for bad in ["", "*.", "a.*.com", "api.example.com:80", "*example.com"] {
            assert!(HostPattern::try_from(bad.to_owned()).is_err(), "{bad}");
        }
    }
}
