//! `builtin:auth-jwt`: verifies a JWT bearer token with `jsonwebtoken` and lets the request through
//! only when it is valid: signature, algorithm, expiry, not-before, issuer and audience. Claims go
//! to later middleware as context `jwt.<claim>`, and to the upstream as headers per
//! `forward-claims`.
//!
//! Keys are chosen by algorithm family, never by what the token asks for: an HMAC algorithm is
//! verified only with `secret`, an asymmetric one only with a public key (`public-key-file`,
//! `jwks`/`jwks-file`/`jwks-url`, by `kid` when the token names one). A public key can therefore
//! never be used as an HMAC secret (algorithm confusion).
//!
//! `jwks-url` is fetched with outbound HTTP (the host must list it in `allow-hosts`) when a
//! request needs it, and kept in the `state` interface (shared by every instance, and by every
//! sluice with the Redis backend): fresh for `jwks-cache-ttl`, refetched on a `kid` it does not
//! know at most once per `jwks-refetch-interval`, and served stale while the identity provider is
//! down. With no key set at all and the provider down, the call traps and `on-error` decides.
//!
//! A token that verified is remembered by the instance (`token-cache` of them, by their text): a
//! client sends one token on many requests, and nothing about it but the time can change. Each use
//! of a remembered token checks `exp` and `nbf` against the clock again, and a change of the
//! `jwks-url` key set forgets every remembered token.
//!
//! Docs: docs/middleware/auth-jwt.md.
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header, errors::ErrorKind};
use serde::Deserialize;
use serde_json::Value;
use sluice_sdk::*;

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Config {
    algorithms: Vec<String>,
    /// HMAC key; the host puts `secret-env`'s value here.
    secret: Option<String>,
    /// A JWK set, as JSON text or a table; the host puts `jwks-file`'s content here.
    jwks: Option<Value>,
    /// A PEM public key; the host puts `public-key-file`'s content here.
    public_key: Option<String>,
    /// Where to fetch a JWK set from (outbound HTTP).
    jwks_url: Option<String>,
    /// How long a fetched JWK set is used before it is fetched again.
    jwks_cache_ttl: Option<String>,
    /// At most one refetch per this interval for a token whose `kid` is unknown.
    jwks_refetch_interval: Option<String>,
    /// How long past `jwks-cache-ttl` a key set is still used while the provider is down.
    jwks_max_stale: Option<String>,
    issuer: Option<String>,
    audience: Option<OneOrMany>,
    leeway: Option<String>,
    header: Option<String>,
    #[serde(default)]
    forward_claims: BTreeMap<String, String>,
    /// How many verified tokens an instance remembers (0: none).
    token_cache: Option<usize>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

/// A verification key, usable for one family of algorithms.
struct Key {
    kid: Option<String>,
    /// The algorithm the JWK pins, if any.
    alg: Option<Algorithm>,
    key: DecodingKey,
}

struct AuthJwt {
    /// Each allowed algorithm with its claim checks (issuer, audience, leeway), built once.
    algorithms: Vec<(Algorithm, Validation)>,
    secret: Option<DecodingKey>,
    public: Vec<Key>,
    remote: Option<Remote>,
    header: String,
    forward: Vec<(String, String)>,
    /// Clock skew allowed on `exp` and `nbf`, in seconds.
    leeway: u64,
    verified: Mutex<Verified>,
}

/// A token's claims, as verified.
type Claims = Arc<serde_json::Map<String, Value>>;

/// The tokens this instance verified, by their text, with their claims.
struct Verified {
    capacity: usize,
    /// The `jwks-url` key set they were verified with (kept, so that its address is not reused).
    keys: Option<Arc<Vec<Key>>>,
    tokens: HashMap<String, Remembered>,
}

/// A verified token: its claims, and the times checked again at each use.
struct Remembered {
    claims: Claims,
    exp: Option<u64>,
    nbf: Option<u64>,
}

/// Tokens longer than this are verified every time: with `token-cache`, this bounds what the
/// cache holds.
const LONGEST_REMEMBERED: usize = 8 << 10;

impl Verified {
    /// Forgets every token if `fetched` is not the key set they were verified with.
    fn keyed_by(&mut self, fetched: Option<&Arc<Vec<Key>>>) {
        let same = match (&self.keys, fetched) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        };
        if !same {
            self.tokens.clear();
            self.keys = fetched.cloned();
        }
    }

    /// A remembered `token`'s claims if they are still within their time (`leeway` seconds of
    /// skew allowed), or why they are not; `None` if it is not remembered.
    fn check(&mut self, token: &str, leeway: u64) -> Option<Result<Claims, String>> {
        let entry = self.tokens.get(token)?;
        let now = now_ms() / 1000;
        // As `jsonwebtoken` checks them (`validation.rs`).
        let verdict = if entry.exp.is_some_and(|exp| exp < now.saturating_sub(leeway)) {
            Err("token expired".to_owned())
        } else if entry.nbf.is_some_and(|nbf| nbf > now + leeway) {
            Err("token not yet valid".to_owned())
        } else {
            return Some(Ok(entry.claims.clone()));
        };
        self.tokens.remove(token);
        Some(verdict)
    }

    /// Remembers `token`; when full, the expired ones go, and if none has, all of them.
    fn remember(&mut self, token: &str, claims: &Claims, leeway: u64) {
        if self.capacity == 0 || token.len() > LONGEST_REMEMBERED {
            return;
        }
        if self.tokens.len() >= self.capacity {
            let now = (now_ms() / 1000).saturating_sub(leeway);
            self.tokens.retain(|_, t| t.exp.is_none_or(|exp| exp >= now));
            if self.tokens.len() >= self.capacity {
                self.tokens.clear();
            }
        }
        // `jsonwebtoken` reads them as whole seconds; a fraction is dropped.
        let time = |claim: &str| claims.get(claim).and_then(Value::as_f64).map(|t| t as u64);
        let entry = Remembered {
            claims: claims.clone(),
            exp: time("exp"),
            nbf: time("nbf"),
        };
        self.tokens.insert(token.to_owned(), entry);
    }
}

impl Middleware for AuthJwt {
    fn init(config: &str) -> Result<(Self, Registration), String> {
        let config: Config = serde_json::from_str(config).map_err(|e| format!("invalid config: {e}"))?;
        if config.algorithms.is_empty() {
            return Err("`algorithms`: list at least one algorithm, e.g. [\"RS256\"]".into());
        }
        let mut algorithms = Vec::new();
        for name in &config.algorithms {
            let alg: Algorithm = name.parse().map_err(|_| {
                format!(
                    "`algorithms`: `{name}` is not one of HS256, HS384, HS512, RS256, RS384, RS512, \
                     PS256, PS384, PS512, ES256, ES384, EdDSA"
                )
            })?;
            algorithms.push(alg);
        }

        let secret = config.secret.as_deref().map(|s| DecodingKey::from_secret(s.as_bytes()));
        let mut public = Vec::new();
        if let Some(pem) = &config.public_key {
            let key = DecodingKey::from_rsa_pem(pem.as_bytes())
                .or_else(|_| DecodingKey::from_ec_pem(pem.as_bytes()))
                .or_else(|_| DecodingKey::from_ed_pem(pem.as_bytes()))
                .map_err(|e| format!("`public-key-file`: not an RSA, EC or Ed25519 public key in PEM: {e}"))?;
            public.push(Key {
                kid: None,
                alg: None,
                key,
            });
        }
        if let Some(jwks) = &config.jwks {
            let set: JwkSet = match jwks {
                Value::String(text) => serde_json::from_str(text),
                other => serde_json::from_value(other.clone()),
            }
            .map_err(|e| format!("`jwks`: not a JWK set: {e}"))?;
            public.extend(keys_of(&set).map_err(|e| format!("`jwks`: {e}"))?);
        }
        let remote = match config.jwks_url {
            Some(url) => {
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    return Err(format!("`jwks-url`: `{url}` is not an http:// or https:// URL"));
                }
                Some(Remote {
                    url,
                    cache_ttl: duration("jwks-cache-ttl", &config.jwks_cache_ttl, "5m")?,
                    refetch_interval: duration("jwks-refetch-interval", &config.jwks_refetch_interval, "30s")?,
                    max_stale: duration("jwks-max-stale", &config.jwks_max_stale, "24h")?,
                    parsed: Mutex::new(None),
                })
            }
            None => None,
        };
        for alg in &algorithms {
            let usable = if is_hmac(*alg) {
                secret.is_some()
            } else {
                remote.is_some() || public.iter().any(|k| k.key.family() == alg.family())
            };
            if !usable {
                let need = if is_hmac(*alg) {
                    "`secret` or `secret-env`"
                } else {
                    "a matching key in `public-key-file`, `jwks`, `jwks-file` or `jwks-url`"
                };
                return Err(format!("`algorithms`: {alg:?} needs {need}"));
            }
        }
        let leeway = duration("leeway", &config.leeway, "30s")?.as_secs();
        let header = config
            .header
            .unwrap_or_else(|| "authorization".into())
            .to_ascii_lowercase();
        let forward: Vec<(String, String)> = config
            .forward_claims
            .into_iter()
            .map(|(claim, header)| (claim, header.to_ascii_lowercase()))
            .collect();
        let audience = config.audience.map(|a| match a {
            OneOrMany::One(one) => vec![one],
            OneOrMany::Many(many) => many,
        });
        let algorithms = algorithms
            .into_iter()
            .map(|alg| {
                let mut validation = Validation::new(alg);
                validation.leeway = leeway;
                validation.validate_nbf = true;
                if let Some(issuer) = &config.issuer {
                    validation.set_issuer(&[issuer]);
                    validation.set_required_spec_claims(&["exp", "iss"]);
                }
                match &audience {
                    Some(audience) => validation.set_audience(audience),
                    None => validation.validate_aud = false,
                }
                (alg, validation)
            })
            .collect();
        let registration = Registration::phases(Phases::REQUEST_HEADERS).with_request_headers(&[&header]);
        let verified = Verified {
            capacity: config.token_cache.unwrap_or(1000),
            keys: None,
            tokens: HashMap::new(),
        };
        Ok((
            AuthJwt {
                algorithms,
                secret,
                public,
                remote,
                header,
                forward,
                leeway,
                verified: Mutex::new(verified),
            },
            registration,
        ))
    }

    fn on_request_headers(&self, req: Request) -> RequestDecision {
        let fetched = self.remote.as_ref().map(|remote| {
            remote.keys().unwrap_or_else(|e| {
                log(Level::Error, &format!("no key set: {e}"));
                // No keys at all: trapping hands the request to the middleware's `on-error`.
                panic!("jwks-url: no key set: {e}")
            })
        });
        let verdict = match self.token(&req) {
            Ok(token) => self.verified(token, fetched),
            Err(reason) => Err(reason),
        };
        match verdict {
            Ok(claims) => {
                let mut edits = HeaderEdits::none();
                for (claim, header) in &self.forward {
                    if let Some(value) = claims.get(claim) {
                        edits.set.push((header.clone(), text(value).into_bytes()));
                    }
                }
                let context = claims.iter().map(|(k, v)| (format!("jwt.{k}"), text(v))).collect();
                RequestDecision::Next((edits, context))
            }
            Err(reason) => RequestDecision::Respond(
                Response::problem(401, "Unauthorized", &format!("invalid bearer token: {reason}")).with_header(
                    "www-authenticate",
                    format!("Bearer error=\"invalid_token\", error_description=\"{reason}\""),
                ),
            ),
        }
    }
}

impl AuthJwt {
    /// The token in the request, or why there is none.
    fn token<'a>(&self, req: &'a Request) -> Result<&'a str, String> {
        let value = req.header(&self.header).ok_or("no token")?;
        let value = std::str::from_utf8(value).map_err(|_| "malformed token")?.trim();
        match value.split_once(' ') {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => Ok(token.trim()),
            _ if self.header != "authorization" && !value.contains(' ') => Ok(value),
            _ => Err("the authorization scheme is not Bearer".into()),
        }
    }

    /// `token`'s claims, remembered or verified with the configured keys and `fetched` (the
    /// `jwks-url` set, fetched again once for a `kid` it lacks); or why it is rejected.
    fn verified(&self, token: &str, fetched: Option<Arc<Vec<Key>>>) -> Result<Claims, String> {
        let mut verified = self.verified.lock().unwrap_or_else(|e| e.into_inner());
        verified.keyed_by(fetched.as_ref());
        if let Some(verdict) = verified.check(token, self.leeway) {
            return verdict;
        }
        let keys = fetched.as_deref().map_or(&[][..], |keys| &keys[..]);
        let mut verdict = self.verify(token, keys);
        if let (Err(reason), Some(remote)) = (&verdict, &self.remote)
            && reason == UNKNOWN_KID
            && let Some(fresh) = remote.refetch_for_unknown_kid()
        {
            verdict = self.verify(token, &fresh);
            verified.keyed_by(Some(&fresh));
        }
        let claims = Arc::new(verdict?);
        verified.remember(token, &claims, self.leeway);
        Ok(claims)
    }

    /// The token's claims, or why it is rejected (plain words, no quotes: it goes in a header).
    fn verify(&self, token: &str, fetched: &[Key]) -> Result<serde_json::Map<String, Value>, String> {
        let header = decode_header(token).map_err(|e| match e.kind() {
            ErrorKind::Json(_) | ErrorKind::InvalidAlgorithmName => {
                "malformed token or unsupported algorithm (alg none is never accepted)".to_owned()
            }
            _ => "malformed token".to_owned(),
        })?;
        let alg = header.alg;
        let Some((_, validation)) = self.algorithms.iter().find(|(allowed, _)| *allowed == alg) else {
            return Err(format!("algorithm {alg:?} is not allowed"));
        };
        let candidates: Vec<&DecodingKey> = if is_hmac(alg) {
            self.secret.iter().collect()
        } else {
            let all = || self.public.iter().chain(fetched);
            let matching = all().filter(|k| k.key.family() == alg.family() && k.alg.is_none_or(|a| a == alg));
            match &header.kid {
                Some(kid) if all().any(|k| k.kid.is_some()) => matching
                    .filter(|k| k.kid.as_deref() == Some(kid))
                    .map(|k| &k.key)
                    .collect(),
                _ => matching.map(|k| &k.key).collect(),
            }
        };
        if candidates.is_empty() {
            return Err(match &header.kid {
                Some(_) => UNKNOWN_KID.into(),
                None => format!("no key for algorithm {alg:?}"),
            });
        }
        let mut last = String::from("bad signature");
        for key in candidates {
            match decode::<serde_json::Map<String, Value>>(token, key, validation) {
                Ok(data) => return Ok(data.claims),
                Err(e) => {
                    last = match e.kind() {
                        ErrorKind::InvalidSignature => "bad signature".into(),
                        ErrorKind::ExpiredSignature => "token expired".into(),
                        ErrorKind::ImmatureSignature => "token not yet valid".into(),
                        ErrorKind::InvalidIssuer => "wrong issuer".into(),
                        ErrorKind::InvalidAudience => "wrong audience".into(),
                        ErrorKind::MissingRequiredClaim(claim) => format!("missing claim {claim}"),
                        ErrorKind::InvalidAlgorithm => "the key does not match the algorithm".into(),
                        _ => "malformed token".into(),
                    };
                    if !matches!(e.kind(), ErrorKind::InvalidSignature) {
                        break; // the signature checked out: the claims are what is wrong
                    }
                }
            }
        }
        Err(last)
    }
}

/// The rejection for a token whose `kid` no key has (a `jwks-url` refetch may know it).
const UNKNOWN_KID: &str = "unknown key id";

/// `jwks-url`: a key set fetched with outbound HTTP, kept in state.
struct Remote {
    url: String,
    cache_ttl: Duration,
    refetch_interval: Duration,
    max_stale: Duration,
    /// The last key set parsed by this instance, with the bytes it was parsed from: a reused
    /// instance does not parse the same set again.
    parsed: Mutex<Option<Parsed>>,
}

/// A key set's bytes, and its keys.
type Parsed = (Vec<u8>, Arc<Vec<Key>>);

/// State keys (namespaced per middleware by the host).
const SET: &str = "jwks";
const REFRESHING: &str = "jwks-refreshing";
const REFETCHED: &str = "jwks-refetched";

impl Remote {
    /// The key set to verify with: the cached one while fresh; past `jwks-cache-ttl`, one request
    /// (across all instances) fetches it again while the others keep using the cached one; if
    /// that fetch fails the cached one is used until `jwks-max-stale`. `Err` only when there is
    /// no usable key set and the fetch failed.
    fn keys(&self) -> Result<Arc<Vec<Key>>, String> {
        let now = now_ms();
        let cached = match state::get(SET) {
            Ok(cached) => cached.and_then(|bytes| split_stored(&bytes).map(|(at, set)| (at, set.to_vec()))),
            Err(e) => {
                log(
                    Level::Warn,
                    &format!("cannot read the cached key set ({e}); fetching it"),
                );
                None
            }
        };
        let Some((fetched_at, set)) = cached else {
            return self
                .fetch_and_store()
                .map_err(|e| format!("fetching {} failed: {e}", self.url));
        };
        if now.saturating_sub(fetched_at) < self.cache_ttl.as_millis() as u64 {
            return self.parse(&set);
        }
        // Stale: one fetch per few seconds across every instance; the rest use what is cached.
        if state::incr(REFRESHING, 1, 5_000) == Ok(1) {
            match self.fetch_and_store() {
                Ok(keys) => return Ok(keys),
                Err(e) => log(
                    Level::Warn,
                    &format!(
                        "refreshing the key set from {} failed ({e}); using the cached one",
                        self.url
                    ),
                ),
            }
        }
        self.parse(&set)
    }

    /// A token named a `kid` no cached key has: fetch the set again, at most once per
    /// `jwks-refetch-interval` across every instance.
    fn refetch_for_unknown_kid(&self) -> Option<Arc<Vec<Key>>> {
        let interval = self.refetch_interval.as_millis() as u64;
        if state::incr(REFETCHED, 1, interval.max(1)) != Ok(1) {
            return None;
        }
        self.fetch_and_store()
            .map_err(|e| {
                log(
                    Level::Warn,
                    &format!("refetching the key set from {} failed: {e}", self.url),
                )
            })
            .ok()
    }

    fn fetch_and_store(&self) -> Result<Arc<Vec<Key>>, String> {
        let response = sluice_sdk::http::get(&self.url).map_err(|e| e.to_string())?;
        if response.status != 200 {
            return Err(format!("status {}", response.status));
        }
        let keys = self.parse(&response.body)?;
        let mut stored = now_ms().to_be_bytes().to_vec();
        stored.extend_from_slice(&response.body);
        let keep = (self.cache_ttl + self.max_stale).as_millis() as u64;
        if let Err(e) = state::set(SET, &stored, keep.max(1)) {
            log(Level::Warn, &format!("cannot cache the key set: {e}"));
        }
        log(Level::Info, &format!("fetched {} keys from {}", keys.len(), self.url));
        Ok(keys)
    }

    fn parse(&self, set: &[u8]) -> Result<Arc<Vec<Key>>, String> {
        let mut parsed = self.parsed.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((bytes, keys)) = parsed.as_ref()
            && bytes == set
        {
            return Ok(keys.clone());
        }
        let jwks: JwkSet = serde_json::from_slice(set).map_err(|e| format!("not a JWK set: {e}"))?;
        let keys = Arc::new(keys_of(&jwks)?);
        *parsed = Some((set.to_vec(), keys.clone()));
        Ok(keys)
    }
}

/// The keys of a JWK set; a key that cannot be used is an error naming it.
fn keys_of(set: &JwkSet) -> Result<Vec<Key>, String> {
    set.keys
        .iter()
        .map(|jwk| {
            let named = || jwk.common.key_id.as_deref().unwrap_or("(no kid)").to_owned();
            let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("key {:?} cannot be used: {e}", named()))?;
            let alg = match jwk.common.key_algorithm {
                Some(a) => Some(
                    a.to_string()
                        .parse::<Algorithm>()
                        .map_err(|_| format!("key algorithm {a} is not a signature algorithm"))?,
                ),
                None => None,
            };
            Ok(Key {
                kid: jwk.common.key_id.clone(),
                alg,
                key,
            })
        })
        .collect()
}

/// A stored key set: when it was fetched (ms since the epoch, 8 bytes big-endian), then the JSON.
fn split_stored(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let (at, set) = bytes.split_at_checked(8)?;
    Some((u64::from_be_bytes(at.try_into().ok()?), set))
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn duration(key: &str, value: &Option<String>, default: &str) -> Result<Duration, String> {
    let text = value.as_deref().unwrap_or(default);
    humantime::parse_duration(text).map_err(|e| format!("`{key}`: `{text}` is not a duration ({e})"))
}

fn is_hmac(alg: Algorithm) -> bool {
    matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)
}

/// A claim as text: strings as they are, anything else as JSON.
fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

export_middleware!(AuthJwt);
