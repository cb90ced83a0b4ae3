//! What `builtin:redact` does to a body, without the middleware around it: compiled into the
//! component (`lib.rs`) and, for the Wasm-tax baseline, natively into `benches/builtin.rs`.
use std::borrow::Cow;
use std::io::{Read, Write};

use regex::Regex;
use regex_automata::{Input, meta};
use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::Value;

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Config {
    patterns: Option<Vec<String>>,
    #[serde(default)]
    json_fields: Vec<String>,
    #[serde(default)]
    custom: Vec<Custom>,
    replacement: Option<String>,
    keep_last: Option<usize>,
    content_types: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Custom {
    name: String,
    regex: String,
}

/// A pattern and an extra check a match must pass (Luhn, a real IPv6 address).
struct Pattern {
    source: String,
    regex: Regex,
    check: fn(&str) -> bool,
}

/// The built-in patterns, most specific first: the order they are applied in.
const BUILTIN: &[&str] = &["email", "iban", "credit-card", "ssn", "ipv6", "ipv4", "phone"];

fn builtin(name: &str) -> Option<Pattern> {
    let (regex, check): (&str, fn(&str) -> bool) = match name {
        "email" => (r"(?i)[a-z0-9._%+-]+@[a-z0-9-]+(?:\.[a-z0-9-]+)*\.[a-z]{2,}", always),
        "credit-card" => (r"\b\d(?:[ -]?\d){11,18}\b", luhn),
        "phone" => (
            r"(?:\+\d{1,3}[ .-]?|\b00\d{1,3}[ .-]?)?(?:\(\d{2,4}\)[ .-]?|\b\d{2,4}[ .-])\d{3,4}[ .-]?\d{3,4}(?:\s*(?:x|ext\.?)\s*\d{1,6})?\b|\b\d{10}\b",
            always,
        ),
        "ssn" => (r"\b\d{3}-\d{2}-\d{4}\b", always),
        "iban" => (r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b", always),
        "ipv4" => (
            r"\b(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?:\.(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}\b",
            always,
        ),
        "ipv6" => (r"[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}", is_ipv6),
        _ => return None,
    };
    // ASCII classes (`(?-u)`): Unicode `\d` and `\b` make the automata many times larger, and
    // the engine builds its lazy DFA over them on a fresh instance's first match.
    let source = format!("(?-u){regex}");
    Some(Pattern {
        regex: Regex::new(&source).expect("built-in patterns compile"),
        source,
        check,
    })
}

/// Text of the kind `redact` sees, with one of each built-in pattern in it.
const WARM_UP: &str = r#"{"id":42,"name":"Ada Lovelace","email":"ada.lovelace@example.com","phone":"+44 20 7946 0958","card":"4111 1111 1111 1111","ssn":"078-05-1120","iban":"GB82 WEST 1234 5698 7654 32","ip":"192.168.10.20","ip6":"2001:db8::8a2e:370:7334","note":"Call (555) 123-4567 ext. 89, or mail support@example.org; order 2024-06-01T12:00:00Z, total 129.90 EUR."}"#;

fn always(_: &str) -> bool {
    true
}

/// The Luhn checksum over the digits of `s`.
fn luhn(s: &str) -> bool {
    let digits: Vec<u32> = s.chars().filter_map(|c| c.to_digit(10)).collect();
    if !(12..=19).contains(&digits.len()) {
        return false;
    }
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            if i % 2 == 1 {
                if d * 2 > 9 { d * 2 - 9 } else { d * 2 }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

fn is_ipv6(s: &str) -> bool {
    s.parse::<std::net::Ipv6Addr>().is_ok()
}

/// The compiled configuration: patterns, fields and the mask.
pub struct Masker {
    /// Every pattern in one automaton, in precedence order: one scan of a string finds the
    /// leftmost match of any of them (the earliest pattern winning where several start).
    all: meta::Regex,
    patterns: Vec<Pattern>,
    fields: Vec<String>,
    replacement: String,
    keep_last: usize,
    /// The media types whose bodies are masked (lowercase; `*` matches any run).
    pub content_types: Vec<String>,
}

impl Masker {
    /// Compiles `config` (the middleware's JSON config), warming every pattern up so the regex
    /// engine's lazy DFA states are built here (in the pre-initialized snapshot), not per request.
    pub fn new(config: &str) -> Result<Masker, String> {
        let config: Config = serde_json::from_str(config).map_err(|e| format!("invalid config: {e}"))?;
        let names = config
            .patterns
            .unwrap_or_else(|| BUILTIN.iter().map(|s| s.to_string()).collect());
        if let Some(name) = names.iter().find(|n| !BUILTIN.contains(&n.as_str())) {
            return Err(format!(
                "`patterns`: unknown pattern `{name}` (built in: {})",
                BUILTIN.join(", ")
            ));
        }
        // Applied in BUILTIN's order whatever the config's: a card number is masked whole as
        // one before `phone` could take a run of its digits for a phone number.
        let mut patterns: Vec<Pattern> = BUILTIN
            .iter()
            .filter(|b| names.iter().any(|n| n == *b))
            .filter_map(|b| builtin(b))
            .collect();
        for custom in &config.custom {
            let regex = Regex::new(&custom.regex)
                .map_err(|e| format!("`custom`: pattern `{}` is not a valid regex: {e}", custom.name))?;
            patterns.push(Pattern {
                regex,
                source: custom.regex.clone(),
                check: always,
            });
        }
        let sources: Vec<&str> = patterns.iter().map(|p| p.source.as_str()).collect();
        let all = meta::Regex::new_many(&sources).map_err(|e| format!("`custom`: the patterns do not combine: {e}"))?;
        let _ = all.find_iter(WARM_UP).count();
        for pattern in &patterns {
            let _ = pattern.regex.find_iter(WARM_UP).count();
        }
        let content_types = config
            .content_types
            .unwrap_or_else(|| vec!["application/json".into(), "application/*+json".into(), "text/*".into()])
            .into_iter()
            .map(|c| c.to_ascii_lowercase())
            .collect();
        Ok(Masker {
            all,
            patterns,
            fields: config.json_fields,
            replacement: config.replacement.unwrap_or_else(|| "[REDACTED]".into()),
            keep_last: config.keep_last.unwrap_or(0),
            content_types,
        })
    }

    /// `body` masked, or `None` when nothing in it is to be masked: masked as JSON when `json` and
    /// it parses, else as text; decompressed first and compressed again when `gzip`. An error when
    /// a gzip body does not decompress.
    pub fn body(&self, body: &[u8], json: bool, gzip: bool) -> Result<Option<Vec<u8>>, String> {
        let decompressed;
        let plain = if gzip {
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(body)
                .read_to_end(&mut out)
                .map_err(|e| format!("the gzip response body does not decompress: {e}"))?;
            decompressed = out;
            &decompressed[..]
        } else {
            body
        };
        let text = match std::str::from_utf8(plain) {
            Ok(text) => Cow::Borrowed(text),
            Err(_) => String::from_utf8_lossy(plain),
        };
        let masked = if json && serde_json::from_str::<IgnoredAny>(&text).is_ok() {
            self.mask_json(&text)
        } else {
            self.mask_text(&text)
        };
        let Cow::Owned(masked) = masked else {
            return Ok(None);
        };
        Ok(Some(if gzip {
            let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            encoder.write_all(masked.as_bytes()).expect("writing to memory");
            encoder.finish().expect("writing to memory")
        } else {
            masked.into_bytes()
        }))
    }
}

impl Masker {
    fn mask(&self, original: &str) -> String {
        let n = self.keep_last.min(original.chars().count().saturating_sub(1));
        let kept = match n {
            0 => "",
            n => original
                .char_indices()
                .rev()
                .nth(n - 1)
                .map_or("", |(at, _)| &original[at..]),
        };
        format!("{}{kept}", self.replacement)
    }

    /// `text` with every match masked, in one scan: at each position the first pattern (in
    /// precedence order) that matches there and passes its check wins; a masked span is never
    /// scanned again. Borrowed when nothing matched.
    fn mask_text<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let mut out = String::new();
        let (mut copied, mut at) = (0, 0);
        while at <= text.len() {
            let Some(found) = self.all.search(&Input::new(text).range(at..)) else {
                break;
            };
            let start = found.start();
            match self.accepted(text, start, found.pattern().as_usize(), found.end()) {
                Some(end) => {
                    out.push_str(&text[copied..start]);
                    out.push_str(&self.mask(&text[start..end]));
                    (copied, at) = (end, end);
                }
                // Nothing masks here: go on from the next character.
                None => at = start + text[start..].chars().next().map_or(1, char::len_utf8),
            }
        }
        if copied == 0 {
            return Cow::Borrowed(text);
        }
        out.push_str(&text[copied..]);
        Cow::Owned(out)
    }

    /// Where the span to mask at `start` ends: pattern `first` matched up to `end`; if its check
    /// fails (a digit run that is no card number), a later pattern matching at `start` may take it.
    fn accepted(&self, text: &str, start: usize, first: usize, end: usize) -> Option<usize> {
        if end > start && (self.patterns[first].check)(&text[start..end]) {
            return Some(end);
        }
        self.patterns[first + 1..].iter().find_map(|pattern| {
            let found = pattern.regex.find_at(text, start).filter(|m| m.start() == start)?;
            (found.end() > start && (pattern.check)(found.as_str())).then_some(found.end())
        })
    }

    /// `json` (valid JSON) with the values of `json-fields` masked whole and patterns masked in
    /// every other string value, in one pass over its text: keys, numbers, whitespace and the
    /// order of fields are copied as they are. Borrowed when nothing was masked.
    fn mask_json<'a>(&self, json: &'a str) -> Cow<'a, str> {
        let mut out = Rewrite {
            json,
            copied: 0,
            out: String::new(),
        };
        self.json_value(&mut out, skip_space(json, 0));
        if out.copied == 0 {
            return Cow::Borrowed(json);
        }
        out.out.push_str(&json[out.copied..]);
        Cow::Owned(out.out)
    }

    /// Masks the value at `at` of `out.json` and its contents; returns where it ends.
    fn json_value(&self, out: &mut Rewrite<'_>, at: usize) -> usize {
        let bytes = out.json.as_bytes();
        match bytes[at] {
            open @ (b'{' | b'[') => {
                let close = if open == b'{' { b'}' } else { b']' };
                let mut at = skip_space(out.json, at + 1);
                while bytes[at] != close {
                    if open == b'{' {
                        let key_end = string_end(bytes, at);
                        let key = unescape(&out.json[at..key_end]);
                        let value = skip_space(out.json, skip_space(out.json, key_end) + 1);
                        at = if self.fields.iter().any(|f| *f == key) {
                            let end = value_end(bytes, value);
                            let original = match unescape_value(&out.json[value..end]) {
                                Some(text) => text,
                                None => compact(&out.json[value..end]),
                            };
                            out.replace(value, end, &self.mask(&original));
                            end
                        } else {
                            self.json_value(out, value)
                        };
                    } else {
                        at = self.json_value(out, at);
                    }
                    at = skip_space(out.json, at);
                    if bytes[at] == b',' {
                        at = skip_space(out.json, at + 1);
                    }
                }
                at + 1
            }
            b'"' => {
                let end = string_end(bytes, at);
                let text = unescape(&out.json[at..end]);
                if let Cow::Owned(masked) = self.mask_text(&text) {
                    out.replace(at, end, &masked);
                }
                end
            }
            _ => value_end(bytes, at),
        }
    }
}

/// A JSON text being rewritten: what has been copied of it so far, and the copy.
struct Rewrite<'a> {
    json: &'a str,
    copied: usize,
    out: String,
}

impl Rewrite<'_> {
    /// Replaces `json[start..end]` with `text` as a JSON string.
    fn replace(&mut self, start: usize, end: usize, text: &str) {
        self.out.push_str(&self.json[self.copied..start]);
        self.out
            .push_str(&serde_json::to_string(text).expect("a string serializes"));
        self.copied = end;
    }
}

fn skip_space(json: &str, mut at: usize) -> usize {
    let bytes = json.as_bytes();
    while at < bytes.len() && matches!(bytes[at], b' ' | b'\t' | b'\n' | b'\r') {
        at += 1;
    }
    at
}

/// Where the string starting at `at` (its opening quote) ends, past its closing quote.
fn string_end(bytes: &[u8], mut at: usize) -> usize {
    at += 1;
    loop {
        match bytes[at] {
            b'"' => return at + 1,
            b'\\' => at += 2,
            _ => at += 1,
        }
    }
}

/// Where the value starting at `at` ends.
fn value_end(bytes: &[u8], at: usize) -> usize {
    match bytes[at] {
        b'"' => string_end(bytes, at),
        b'{' | b'[' => {
            let (mut depth, mut at) = (0usize, at);
            loop {
                match bytes[at] {
                    b'"' => {
                        at = string_end(bytes, at);
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return at + 1;
                        }
                    }
                    _ => {}
                }
                at += 1;
            }
        }
        _ => {
            let mut end = at;
            while end < bytes.len() && !matches!(bytes[end], b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r') {
                end += 1;
            }
            end
        }
    }
}

/// The text of a JSON string (`"..."`, escapes resolved).
fn unescape(string: &str) -> Cow<'_, str> {
    let inner = &string[1..string.len() - 1];
    if !inner.contains('\\') {
        return Cow::Borrowed(inner);
    }
    Cow::Owned(serde_json::from_str(string).expect("a valid JSON string"))
}

/// The text of a JSON value if it is a string.
fn unescape_value(value: &str) -> Option<String> {
    value.starts_with('"').then(|| unescape(value).into_owned())
}

/// A JSON value other than a string, as compact JSON.
fn compact(value: &str) -> String {
    serde_json::from_str::<Value>(value).map_or_else(|_| value.to_owned(), |v| v.to_string())
}
