//! `builtin:schema-validate` end to end: the answers a client sees, and schemas and cases from the
//! JSON-Schema-Test-Suite (fetched by `scripts/setup.sh`), through a real sluice.

use crate::common;

use std::path::PathBuf;

use common::*;
use serde_json::{Value, json};

const ORDER_SCHEMA: &str = r##"{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "type": "object",
  "required": ["id", "items"],
  "properties": {
    "id": { "type": "integer", "minimum": 1 },
    "items": { "type": "array", "minItems": 1, "items": { "$ref": "#/$defs/item" } }
  },
  "$defs": {
    "item": {
      "type": "object",
      "required": ["sku"],
      "properties": { "sku": { "type": "string", "pattern": "^[A-Z]{3}-[0-9]+$" }, "qty": { "type": "integer", "minimum": 1 } }
    }
  }
}"##;

fn config(upstream: std::net::SocketAddr, middleware: &str, routes: &str) -> String {
    format!("[upstreams.u]\ntargets = [\"{upstream}\"]\n\n{middleware}\n{routes}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_bodies_pass_unchanged_and_invalid_ones_get_every_error() {
    let up = echo().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("order.json"), ORDER_SCHEMA).unwrap();
    let cfg = config(
        up.addr(),
        "[middleware.orders]\ncomponent = \"builtin:schema-validate\"\nconfig = { schema-file = \"order.json\" }\n",
        "[[route]]\nname = \"orders\"\npath-prefix = \"/orders\"\nupstream = \"u\"\nmiddleware = [\"orders\"]\nmax-body = \"1KiB\"\n",
    );
    let sluice = Sluice::start_in(&cfg, dir, &[]);
    let post = |body: String, content_type: &str| {
        client()
            .post(sluice.url("/orders"))
            .header("content-type", content_type)
            .header("x-echo-body", "raw")
            .body(body)
    };

    let valid = r#"{"id": 7, "items": [{"sku": "ABC-1", "qty": 2}]}"#;
    let resp = post(valid.into(), "application/json").send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), valid, "forwarded byte for byte");

    let invalid = r#"{"id": 0, "items": [{"sku": "abc"}, {"qty": 0, "sku": "XYZ-9"}]}"#;
    let resp = post(invalid.into(), "application/json; charset=utf-8")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    let problem: Value = resp.json().await.unwrap();
    let mut errors: Vec<[String; 3]> = problem["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            assert!(!e["message"].as_str().unwrap().is_empty());
            ["instance-path", "schema-path", "evaluation-path"].map(|k| e[k].as_str().unwrap().to_owned())
        })
        .collect();
    errors.sort();
    let expected = [
        ["/id", "/properties/id/minimum", "/properties/id/minimum"],
        [
            "/items/0/sku",
            "/$defs/item/properties/sku/pattern",
            "/properties/items/items/$ref/properties/sku/pattern",
        ],
        [
            "/items/1/qty",
            "/$defs/item/properties/qty/minimum",
            "/properties/items/items/$ref/properties/qty/minimum",
        ],
    ]
    .map(|row| row.map(str::to_owned));
    assert_eq!(errors, expected, "{problem:#}");
    assert_eq!(
        problem["detail"],
        "the request body does not match the schema (3 errors)"
    );

    let resp = post("{\"id\": ".into(), "application/json").send().await.unwrap();
    assert_eq!(resp.status(), 400);
    let problem: Value = resp.json().await.unwrap();
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .starts_with("the request body is not valid JSON")
    );

    let resp = post(valid.into(), "text/plain").send().await.unwrap();
    assert_eq!(resp.status(), 415);
    let resp = post(valid.into(), "application/vnd.orders+json").send().await.unwrap();
    assert_eq!(resp.status(), 200, "application/*+json is JSON too");

    let big = json!({"id": 1, "items": vec![json!({"sku": "ABC-1"}); 100]}).to_string();
    assert_eq!(post(big, "application/json").send().await.unwrap().status(), 413);

    // Methods outside `methods` (default POST, PUT, PATCH) are not validated.
    let resp = client().get(sluice.url("/orders")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        up.requests(),
        3,
        "only the valid bodies (and the GET) reached the upstream"
    );
}

/// The JSON-Schema-Test-Suite, as `scripts/setup.sh` fetched it.
fn suite() -> PathBuf {
    let dir = repo_root().join("target/json-schema-test-suite/tests/draft2020-12");
    assert!(
        dir.is_dir(),
        "{} is missing: run scripts/setup.sh (make test does)",
        dir.display()
    );
    dir
}

/// Keyword files of the suite run here, every group of each (a group is one schema and its
/// cases). Each schema is its own middleware; they share one compiled component, so a schema costs
/// its `init` (milliseconds), not a compile.
const KEYWORDS: &[&str] = &[
    "type",
    "required",
    "properties",
    "additionalProperties",
    "enum",
    "minimum",
    "pattern",
    "prefixItems",
    "oneOf",
    "if-then-else",
    "ref",
    "anchor",
    "unevaluatedProperties",
];
const GROUPS_PER_KEYWORD: usize = usize::MAX;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_json_schema_test_suite_cases_pass() {
    let up = echo().await;
    let dir = tempfile::tempdir().unwrap();
    let mut middleware = String::new();
    let mut routes = String::new();
    let mut cases = Vec::new(); // (route index, description, data, valid)
    let mut index = 0;
    for keyword in KEYWORDS {
        let groups: Value =
            serde_json::from_slice(&std::fs::read(suite().join(format!("{keyword}.json"))).unwrap()).unwrap();
        let groups = groups
            .as_array()
            .unwrap()
            .iter()
            .filter(|g| !g["schema"].to_string().contains("http://localhost")) // remote refs: not granted
            .take(GROUPS_PER_KEYWORD);
        for group in groups {
            std::fs::write(dir.path().join(format!("{index}.json")), group["schema"].to_string()).unwrap();
            middleware.push_str(&format!(
                "[middleware.s{index}]\ncomponent = \"builtin:schema-validate\"\nconfig = {{ schema-file = \"{index}.json\" }}\n"
            ));
            routes.push_str(&format!(
                "[[route]]\nname = \"s{index}\"\npath-prefix = \"/s/{index}/\"\nupstream = \"u\"\nmiddleware = [\"s{index}\"]\n"
            ));
            for case in group["tests"].as_array().unwrap() {
                let description = format!("{keyword}: {} / {}", group["description"], case["description"]);
                cases.push((
                    index,
                    description,
                    case["data"].to_string(),
                    case["valid"].as_bool().unwrap(),
                ));
            }
            index += 1;
        }
    }
    let sluice = Sluice::start_in(&config(up.addr(), &middleware, &routes), dir, &[]);
    let client = client();
    let mut wrong = Vec::new();
    for (route, description, data, valid) in &cases {
        let resp = client
            .post(sluice.url(&format!("/s/{route}/")))
            .header("content-type", "application/json")
            .body(data.clone())
            .send()
            .await
            .unwrap();
        let expected = if *valid { 200 } else { 400 };
        if resp.status().as_u16() != expected {
            wrong.push(format!("{description}: {data} got {}", resp.status()));
        }
    }
    assert!(cases.len() > 40, "only {} cases", cases.len());
    assert!(
        wrong.is_empty(),
        "{} of {} cases wrong:\n{}",
        wrong.len(),
        cases.len(),
        wrong.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verdicts_agree_with_python_jsonschema_on_generated_instances() {
    let up = echo().await;
    let dir = tempfile::tempdir().unwrap();
    let schema = repo_root().join("tests/schema/order.json");
    std::fs::copy(&schema, dir.path().join("order.json")).unwrap();
    let cases_path = dir.path().join("cases.json");
    python(
        "schema/differential.py",
        &[schema.as_os_str(), cases_path.as_os_str(), "400".as_ref(), "7".as_ref()],
    );
    let cases: Vec<Value> = serde_json::from_slice(&std::fs::read(&cases_path).unwrap()).unwrap();
    let cfg = config(
        up.addr(),
        "[middleware.orders]\ncomponent = \"builtin:schema-validate\"\nconfig = { schema-file = \"order.json\" }\n",
        "[[route]]\nname = \"orders\"\nupstream = \"u\"\nmiddleware = [\"orders\"]\n",
    );
    let sluice = Sluice::start_in(&cfg, dir, &[]);
    let client = client();
    let (mut valid, mut disagreements) = (0, Vec::new());
    for case in &cases {
        let python_valid = case["valid"].as_bool().unwrap();
        valid += usize::from(python_valid);
        let status = client
            .post(sluice.url("/"))
            .header("content-type", "application/json")
            .body(case["instance"].to_string())
            .send()
            .await
            .unwrap()
            .status()
            .as_u16();
        if status != if python_valid { 200 } else { 400 } {
            disagreements.push(format!(
                "{} -> {status}, python says valid={python_valid}",
                case["instance"]
            ));
        }
    }
    assert!(
        valid > 20 && cases.len() - valid > 20,
        "{valid} of {} valid: the generator should produce both",
        cases.len()
    );
    assert!(
        disagreements.is_empty(),
        "{} disagreements:\n{}",
        disagreements.len(),
        disagreements.join("\n")
    );
}
