//! `builtin:auth-jwt`: verifies a JWT bearer token with `jsonwebtoken` and lets the request through
//! only when it is valid: signature, algorithm, expiry, not-before, issuer and audience. Claims go
//! to later middleware as context `jwt.<claim>`, and to the upstream as headers per
//! `forward-claims`.
//!
//! Keys are chosen by algorithm family, never by what the token asks for: an HMAC algorithm is
//! verified only with `secret`, an asymmetric one only with a public key (`public-key-file`,
//! `jwks`/`jwks-file`, by `kid` when the token names one). A public key can therefore never be
//! used as an HMAC secret (algorithm confusion).
//!
//! Docs: docs/middleware/auth-jwt.md.
use std::collections::BTreeMap;

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
    issuer: Option<String>,
    audience: Option<OneOrMany>,
    leeway: Option<String>,
    header: Option<String>,
    #[serde(default)]
    forward_claims: BTreeMap<String, String>,
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
    algorithms: Vec<Algorithm>,
    secret: Option<DecodingKey>,
    public: Vec<Key>,
    issuer: Option<String>,
    audience: Option<Vec<String>>,
    leeway: u64,
    header: String,
    forward: Vec<(String, String)>,
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
            for jwk in &set.keys {
                let key = DecodingKey::from_jwk(jwk).map_err(|e| {
                    format!(
                        "`jwks`: key {:?} cannot be used: {e}",
                        jwk.common.key_id.as_deref().unwrap_or("(no kid)")
                    )
                })?;
                let alg = match jwk.common.key_algorithm {
                    Some(a) => Some(
                        a.to_string()
                            .parse::<Algorithm>()
                            .map_err(|_| format!("`jwks`: key algorithm {a} is not a signature algorithm"))?,
                    ),
                    None => None,
                };
                public.push(Key {
                    kid: jwk.common.key_id.clone(),
                    alg,
                    key,
                });
            }
        }
        for alg in &algorithms {
            let usable = if is_hmac(*alg) {
                secret.is_some()
            } else {
                public.iter().any(|k| k.key.family() == alg.family())
            };
            if !usable {
                let need = if is_hmac(*alg) {
                    "`secret` or `secret-env`"
                } else {
                    "a matching key in `public-key-file`, `jwks` or `jwks-file`"
                };
                return Err(format!("`algorithms`: {alg:?} needs {need}"));
            }
        }
        let leeway = match &config.leeway {
            Some(text) => humantime::parse_duration(text)
                .map_err(|e| format!("`leeway`: `{text}` is not a duration ({e})"))?
                .as_secs(),
            None => 30,
        };
        let header = config
            .header
            .unwrap_or_else(|| "authorization".into())
            .to_ascii_lowercase();
        let forward: Vec<(String, String)> = config
            .forward_claims
            .into_iter()
            .map(|(claim, header)| (claim, header.to_ascii_lowercase()))
            .collect();
        let mut registration = Registration::phases(Phases::REQUEST_HEADERS);
        registration.request_headers = Some(vec![header.clone()]);
        Ok((
            AuthJwt {
                algorithms,
                secret,
                public,
                issuer: config.issuer,
                audience: config.audience.map(|a| match a {
                    OneOrMany::One(one) => vec![one],
                    OneOrMany::Many(many) => many,
                }),
                leeway,
                header,
                forward,
            },
            registration,
        ))
    }

    fn on_request_headers(&self, req: Request) -> RequestDecision {
        match self.verify(&req) {
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
    /// The token's claims, or why it is rejected (plain words, no quotes: it goes in a header).
    fn verify(&self, req: &Request) -> Result<serde_json::Map<String, Value>, String> {
        let value = req.header(&self.header).ok_or("no token")?;
        let value = std::str::from_utf8(value).map_err(|_| "malformed token")?.trim();
        let token = match value.split_once(' ') {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim(),
            _ if self.header != "authorization" && !value.contains(' ') => value,
            _ => return Err("the authorization scheme is not Bearer".into()),
        };
        let header = decode_header(token).map_err(|e| match e.kind() {
            ErrorKind::Json(_) | ErrorKind::InvalidAlgorithmName => {
                "malformed token or unsupported algorithm (alg none is never accepted)".to_owned()
            }
            _ => "malformed token".to_owned(),
        })?;
        let alg = header.alg;
        if !self.algorithms.contains(&alg) {
            return Err(format!("algorithm {alg:?} is not allowed"));
        }
        let candidates: Vec<&DecodingKey> = if is_hmac(alg) {
            self.secret.iter().collect()
        } else {
            let matching = self
                .public
                .iter()
                .filter(|k| k.key.family() == alg.family() && k.alg.is_none_or(|a| a == alg));
            match &header.kid {
                Some(kid) if self.public.iter().any(|k| k.kid.is_some()) => matching
                    .filter(|k| k.kid.as_deref() == Some(kid))
                    .map(|k| &k.key)
                    .collect(),
                _ => matching.map(|k| &k.key).collect(),
            }
        };
        if candidates.is_empty() {
            return Err(match &header.kid {
                Some(_) => "unknown key id".into(),
                None => format!("no key for algorithm {alg:?}"),
            });
        }
        let mut validation = Validation::new(alg);
        validation.leeway = self.leeway;
        validation.validate_nbf = true;
        if let Some(issuer) = &self.issuer {
            validation.set_issuer(&[issuer]);
            validation.set_required_spec_claims(&["exp", "iss"]);
        }
        match &self.audience {
            Some(audience) => validation.set_audience(audience),
            None => validation.validate_aud = false,
        }
        let mut last = String::from("bad signature");
        for key in candidates {
            match decode::<serde_json::Map<String, Value>>(token, key, &validation) {
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
