//! `builtin:auth-jwt` end to end, against tokens and keys made by another JWT library (PyJWT and
//! cryptography, `tests/jwt/sign.py`), through a real sluice in front of a real upstream.

use crate::common;

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use common::*;
use serde_json::Value;

const SECRET: &str = "test-hmac-secret-of-32-bytes-ok!";

/// Fresh keys and tokens from PyJWT, in `dir`.
fn mint(dir: &Path) -> HashMap<String, String> {
    python("jwt/sign.py", &[dir.as_os_str()]);
    serde_json::from_slice(&std::fs::read(dir.join("tokens.json")).unwrap()).unwrap()
}

fn config(upstream: std::net::SocketAddr, jwt: &str) -> String {
    format!(
        "[upstreams.u]\ntargets = [\"{upstream}\"]\n\n[middleware.jwt]\ncomponent = \"builtin:auth-jwt\"\n{jwt}\n\n[[route]]\nname = \"api\"\npath-prefix = \"/api\"\nupstream = \"u\"\nmiddleware = [\"jwt\"]\n"
    )
}

async fn call(sluice: &Sluice, authorization: Option<&str>) -> reqwest::Response {
    let mut req = client().get(sluice.url("/api/me"));
    if let Some(value) = authorization {
        req = req.header("authorization", value);
    }
    req.send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_from_another_library_are_verified_and_bad_ones_rejected() {
    let up = echo().await;
    let dir = tempfile::tempdir().unwrap();
    let tokens = mint(dir.path());
    let jwt = r#"config = { algorithms = ["HS256", "RS256", "PS256", "ES256"], secret-env = "JWT_SECRET", jwks-file = "jwks.json", issuer = "https://issuer.test", audience = ["api", "admin-api"], leeway = "30s", forward-claims = { sub = "x-user", role = "x-role" } }"#;
    let sluice = Sluice::start_in(&config(up.addr(), jwt), dir, &[("JWT_SECRET", SECRET)]);

    for name in ["hs256", "rs256", "ps256", "es256", "within_leeway"] {
        let resp = call(&sluice, Some(&format!("Bearer {}", tokens[name]))).await;
        assert_eq!(resp.status(), 200, "{name}");
        let seen: Value = resp.json().await.unwrap();
        assert_eq!(seen["headers"]["x-user"], "user-42", "{name}: forward-claims");
        assert_eq!(seen["headers"]["x-role"], "admin", "{name}");
    }
    let accepted = up.requests();
    assert_eq!(accepted, 5);

    let rejected = [
        (None, "no token"),
        (
            Some("Basic dXNlcjpwdw==".to_owned()),
            "the authorization scheme is not Bearer",
        ),
        (Some("Bearer not.a.jwt".to_owned()), "malformed token"),
        (
            Some(format!("Bearer {}", tokens["alg_none"])),
            "alg none is never accepted",
        ),
        (
            Some(format!("Bearer {}", tokens["hs512"])),
            "algorithm HS512 is not allowed",
        ),
        (Some(format!("Bearer {}", tokens["confusion"])), "bad signature"),
        (Some(format!("Bearer {}", tokens["bad_signature"])), "bad signature"),
        (Some(format!("Bearer {}", tokens["expired"])), "token expired"),
        (
            Some(format!("Bearer {}", tokens["not_yet_valid"])),
            "token not yet valid",
        ),
        (Some(format!("Bearer {}", tokens["wrong_issuer"])), "wrong issuer"),
        (Some(format!("Bearer {}", tokens["wrong_audience"])), "wrong audience"),
        (Some(format!("Bearer {}", tokens["no_exp"])), "missing claim exp"),
        (Some(format!("Bearer {}", tokens["unknown_kid"])), "unknown key id"),
        (
            Some(format!("Bearer {}", tokens["eddsa"])),
            "algorithm EdDSA is not allowed",
        ),
    ];
    for (authorization, reason) in rejected {
        let resp = call(&sluice, authorization.as_deref()).await;
        assert_eq!(resp.status(), 401, "{reason}");
        let challenge = resp.headers()["www-authenticate"].to_str().unwrap().to_owned();
        assert!(
            challenge.starts_with("Bearer error=\"invalid_token\", error_description=\"") && challenge.contains(reason),
            "{reason}: {challenge}"
        );
        assert_eq!(resp.headers()["content-type"], "application/problem+json");
        let problem: Value = resp.json().await.unwrap();
        assert_eq!(problem["status"], 401);
    }
    assert_eq!(up.requests(), accepted, "the upstream never saw a rejected request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_supported_algorithm_verifies_and_only_when_allowed() {
    let up = echo().await;
    let dir = tempfile::tempdir().unwrap();
    let tokens = mint(dir.path());
    let all = [
        "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
    ];
    let jwt = format!(
        "config = {{ algorithms = {all:?}, secret-env = \"JWT_SECRET\", jwks-file = \"jwks-all.json\", audience = \"api\" }}"
    );
    let sluice = Sluice::start_in(&config(up.addr(), &jwt), dir, &[("JWT_SECRET", SECRET)]);
    for alg in all {
        let resp = call(&sluice, Some(&format!("Bearer {}", tokens[&format!("every/{alg}")]))).await;
        assert_eq!(resp.status(), 200, "{alg}");
    }
    assert_eq!(up.requests(), all.len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pem_public_key_file_and_claims_in_the_context() {
    let up = echo().await;
    let dir = tempfile::tempdir().unwrap();
    let tokens = mint(dir.path());
    // EdDSA with an Ed25519 PEM; the rate limit keys on the subject the JWT middleware verified.
    let jwt = "config = { algorithms = [\"EdDSA\"], public-key-file = \"ed25519.pem\" }\n\n[middleware.per-user]\ncomponent = \"builtin:rate-limit\"\nconfig = { key = \"context:jwt.sub\", rate = 1, per = \"1m\", burst = 2 }";
    let cfg = config(up.addr(), jwt).replace("middleware = [\"jwt\"]", "middleware = [\"jwt\", \"per-user\"]");
    let sluice = Sluice::start_in(&cfg, dir, &[]);
    let bearer = format!("Bearer {}", tokens["eddsa"]);
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(call(&sluice, Some(&bearer)).await.status().as_u16());
    }
    assert_eq!(statuses, [200, 200, 429], "limited per verified subject");
    assert_eq!(
        call(&sluice, Some(&format!("Bearer {}", tokens["rs256"])))
            .await
            .status(),
        401
    );
}

#[test]
fn configs_it_cannot_use_are_refused_at_load_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    mint(dir.path());
    let pem = dir.path().join("rsa.pem");
    let check = |jwt: String| {
        let full = format!(
            "[server]\ncache-dir = {:?}\n{}",
            shared_cache_dir().display().to_string(),
            config("127.0.0.1:9".parse().unwrap(), &jwt)
        );
        let (_dir, _path, out) = run_on_config("check", &full);
        assert!(!out.status.success(), "accepted: {jwt}");
        String::from_utf8(out.stderr).unwrap()
    };
    // An HMAC algorithm with only a public key: the key could be abused as a secret.
    let err = check(format!(
        "config = {{ algorithms = [\"RS256\", \"HS256\"], public-key-file = {:?} }}",
        pem.display().to_string()
    ));
    assert!(
        err.contains("middleware `jwt` rejected its config: `algorithms`: HS256 needs `secret` or `secret-env`"),
        "{err}"
    );
    let err = check(r#"config = { algorithms = ["RS257"], secret = "x" }"#.into());
    assert!(err.contains("`algorithms`: `RS257` is not one of"), "{err}");
    let err = check(r#"config = { algorithms = ["HS256"], secret-env = "SLUICE_TEST_UNSET_VARIABLE" }"#.into());
    assert!(
        err.contains(
            "`middleware.jwt.config.secret-env`: environment variable `SLUICE_TEST_UNSET_VARIABLE` is not set"
        ),
        "{err}"
    );
    let err = check(r#"config = { algorithms = ["RS256"], jwks-file = "missing.json" }"#.into());
    assert!(err.contains("`middleware.jwt.config.jwks-file`: cannot read"), "{err}");
}

/// A sluice verifying RS256/ES256/ES384 tokens with the key set at `idp`'s `/jwks.json`.
fn jwks_url_config(upstream: std::net::SocketAddr, idp: &Canned, extra: &str, on_error: &str) -> String {
    let jwt = format!(
        "config = {{ algorithms = [\"RS256\", \"ES256\", \"ES384\"], jwks-url = \"{}\", issuer = \"https://issuer.test\", audience = \"api\", {extra} }}\nallow-hosts = [\"{}\"]\ntimeout = \"2s\"\non-error = \"{on_error}\"",
        idp.url("/jwks.json"),
        idp.addr
    );
    config(upstream, &jwt)
}

async fn status_of(sluice: &Sluice, token: &str) -> u16 {
    call(sluice, Some(&format!("Bearer {token}"))).await.status().as_u16()
}

/// Sends `token` and checks it is refused: 401, with `reason` in the challenge.
async fn assert_refused(sluice: &Sluice, token: &str, reason: &str) {
    let resp = call(sluice, Some(&format!("Bearer {token}"))).await;
    assert_eq!(resp.status(), 401, "{reason}");
    let challenge = resp.headers()["www-authenticate"].to_str().unwrap().to_owned();
    assert!(challenge.contains(reason), "{reason}: {challenge}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jwks_url_is_fetched_cached_and_refetched_for_an_unknown_kid_at_most_once_per_interval() {
    let up = echo().await;
    let dir = tempfile::tempdir().unwrap();
    let tokens = mint(dir.path());
    let jwks = std::fs::read(dir.path().join("jwks.json")).unwrap();
    let jwks_all = std::fs::read(dir.path().join("jwks-all.json")).unwrap();
    let idp = Canned::start(Reply::Body(200, jwks)).await;
    let sluice = Sluice::start(&jwks_url_config(
        up.addr(),
        &idp,
        "jwks-cache-ttl = \"1h\", jwks-refetch-interval = \"2s\"",
        "deny",
    ));

    for _ in 0..10 {
        assert_eq!(status_of(&sluice, &tokens["rs256"]).await, 200);
        assert_eq!(status_of(&sluice, &tokens["es256"]).await, 200);
    }
    assert_eq!(idp.hits(), 1, "fetched once, then served from state");
    assert_eq!(status_of(&sluice, &tokens["bad_signature"]).await, 401);

    // A token signed with a key the set does not have yet: one refetch, still unknown...
    assert_refused(&sluice, &tokens["every/ES384"], "unknown key id").await;
    assert_eq!(idp.hits(), 2);
    // ...and more such tokens within the interval do not refetch.
    for _ in 0..5 {
        assert_eq!(status_of(&sluice, &tokens["every/ES384"]).await, 401);
    }
    assert_eq!(idp.hits(), 2, "at most one refetch per interval");

    // The provider rotates its keys; after the interval the new key is fetched on demand.
    idp.set(Reply::Body(200, jwks_all));
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(status_of(&sluice, &tokens["every/ES384"]).await, 200);
    assert_eq!(idp.hits(), 3);
    assert_eq!(status_of(&sluice, &tokens["every/ES384"]).await, 200);
    assert_eq!(status_of(&sluice, &tokens["rs256"]).await, 200);
    assert_eq!(idp.hits(), 3, "the new set is cached");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_key_set_keeps_serving_while_the_identity_provider_is_down() {
    let up = echo().await;
    let dir = tempfile::tempdir().unwrap();
    let tokens = mint(dir.path());
    let jwks = std::fs::read(dir.path().join("jwks.json")).unwrap();
    let mut idp = Canned::start(Reply::Body(200, jwks)).await;
    let sluice = Sluice::start(&jwks_url_config(up.addr(), &idp, "jwks-cache-ttl = \"1s\"", "deny"));
    assert_eq!(status_of(&sluice, &tokens["rs256"]).await, 200);
    assert_eq!(idp.hits(), 1);

    // Down, and the cached set is past its TTL: requests are still verified with it.
    idp.stop().await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    for _ in 0..5 {
        assert_eq!(status_of(&sluice, &tokens["rs256"]).await, 200);
        assert_eq!(status_of(&sluice, &tokens["bad_signature"]).await, 401);
    }
    assert!(
        sluice.stderr().contains("using the cached one"),
        "a failed refresh is logged:\n{}",
        sluice.stderr()
    );

    // Back up: the next refresh succeeds.
    idp.resume().await;
    tokio::time::sleep(Duration::from_millis(5100)).await; // one refresh attempt per 5 s
    assert_eq!(status_of(&sluice, &tokens["rs256"]).await, 200);
    assert_eq!(idp.hits(), 2, "refreshed once the provider was back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_key_set_and_the_provider_down_on_error_decides() {
    let up = echo().await;
    let dir = tempfile::tempdir().unwrap();
    let tokens = mint(dir.path());
    let mut idp = Canned::start(Reply::Body(200, b"{}".to_vec())).await;
    idp.stop().await;

    let deny = Sluice::start(&jwks_url_config(up.addr(), &idp, "", "deny"));
    assert_eq!(status_of(&deny, &tokens["rs256"]).await, 500);
    assert_eq!(up.requests(), 0);
    let allow = Sluice::start(&jwks_url_config(up.addr(), &idp, "", "allow"));
    assert_eq!(
        status_of(&allow, &tokens["rs256"]).await,
        200,
        "on-error = allow lets it through"
    );
    assert!(deny.stderr().contains("no key set"), "{}", deny.stderr());

    // A provider answering garbage is no better than one that is down.
    idp.set(Reply::Body(500, b"oops".to_vec()));
    idp.resume().await;
    assert_eq!(status_of(&deny, &tokens["rs256"]).await, 500);

    // A jwks-url whose host is not in allow-hosts: denied by the host, so no keys.
    let other = Canned::start(Reply::Body(200, std::fs::read(dir.path().join("jwks.json")).unwrap())).await;
    let jwt = format!(
        "config = {{ algorithms = [\"RS256\"], jwks-url = \"{}\" }}\nallow-hosts = [\"{}\"]",
        other.url("/jwks.json"),
        idp.addr
    );
    let sluice = Sluice::start(&config(up.addr(), &jwt));
    assert_eq!(status_of(&sluice, &tokens["rs256"]).await, 500);
    assert_eq!(other.hits(), 0);
    assert!(sluice.stderr().contains("outbound HTTP denied"), "{}", sluice.stderr());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remembered_token_expires_on_time_and_is_forgotten_when_the_key_set_changes() {
    let up = echo().await;
    // Remembered tokens are checked against the clock at each use: one that expires 5 s after
    // PyJWT made it passes, many times, and is refused once it has expired (no leeway).
    let hs = "config = { algorithms = [\"HS256\"], secret-env = \"JWT_SECRET\", leeway = \"0s\" }";
    let sluice = Sluice::start_in(
        &config(up.addr(), hs),
        tempfile::tempdir().unwrap(),
        &[("JWT_SECRET", SECRET)],
    );
    let minted = tempfile::tempdir().unwrap();
    let made = std::time::SystemTime::now();
    let tokens = mint(minted.path());
    for _ in 0..20 {
        assert_eq!(status_of(&sluice, &tokens["short_lived"]).await, 200);
    }
    let expired_at = made + Duration::from_secs(5 + 1);
    if let Ok(wait) = expired_at.duration_since(std::time::SystemTime::now()) {
        tokio::time::sleep(wait + Duration::from_millis(500)).await;
    }
    assert_refused(&sluice, &tokens["short_lived"], "token expired").await;
    drop(sluice);

    // A token verified with a key from `jwks-url` is forgotten when the provider's set changes:
    // once the set without that key is fetched, the token is refused.
    let dir = tempfile::tempdir().unwrap();
    let tokens = mint(dir.path());
    let jwks = std::fs::read(dir.path().join("jwks.json")).unwrap();
    let jwks_all = std::fs::read(dir.path().join("jwks-all.json")).unwrap();
    let idp = Canned::start(Reply::Body(200, jwks_all)).await;
    let sluice = Sluice::start(&jwks_url_config(up.addr(), &idp, "jwks-cache-ttl = \"1s\"", "deny"));
    for _ in 0..10 {
        assert_eq!(status_of(&sluice, &tokens["every/ES384"]).await, 200);
    }
    idp.set(Reply::Body(200, jwks));
    tokio::time::sleep(Duration::from_millis(1200)).await;
    // The key left the set.
    assert_refused(&sluice, &tokens["every/ES384"], "unknown key id").await;
    assert_eq!(
        status_of(&sluice, &tokens["rs256"]).await,
        200,
        "a key still in the set"
    );
}
