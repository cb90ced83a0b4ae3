//! `builtin:auth-jwt` end to end, against tokens and keys made by another JWT library (PyJWT and
//! cryptography, `tests/jwt/sign.py`), through a real sluice in front of a real upstream.

mod common;

use std::collections::HashMap;
use std::path::Path;

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
