//! `builtin:schema-validate`: validates JSON request bodies against a JSON Schema (draft 2020-12
//! by default, older drafts by `$schema`) with the `jsonschema` crate. The validator is built
//! once, in `init`, and captured in the pre-initialized snapshot; per request there is only the
//! parse and the validation. Invalid bodies are answered 400 with every error, before anything
//! goes upstream.
//!
//! Docs: docs/middleware/schema-validate.md.
use jsonschema::Validator;
use serde::Deserialize;
use serde_json::{Value, json};
use sluice_sdk::*;

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Config {
    /// The schema: JSON text or a table; the host puts `schema-file`'s content here.
    schema: Option<Value>,
    methods: Option<Vec<String>>,
    content_types: Option<Vec<String>>,
}

struct SchemaValidate {
    validator: Validator,
    methods: Vec<String>,
    /// Media types accepted, lowercase; `application/*+json` style suffixes match with `*`.
    content_types: Vec<String>,
}

impl Middleware for SchemaValidate {
    fn init(config: &str) -> Result<(Self, Registration), String> {
        let config: Config = serde_json::from_str(config).map_err(|e| format!("invalid config: {e}"))?;
        let schema = match config.schema {
            Some(Value::String(text)) => serde_json::from_str(&text).map_err(|e| format!("`schema`: not JSON: {e}"))?,
            Some(schema) => schema,
            None => return Err("give `schema` (JSON) or `schema-file` (a path)".into()),
        };
        let validator = jsonschema::validator_for(&schema).map_err(|e| format!("`schema`: not a valid schema: {e}"))?;
        let methods = config
            .methods
            .unwrap_or_else(|| vec!["POST".into(), "PUT".into(), "PATCH".into()])
            .into_iter()
            .map(|m| m.to_ascii_uppercase())
            .collect();
        let content_types = config
            .content_types
            .unwrap_or_else(|| vec!["application/json".into(), "application/*+json".into()])
            .into_iter()
            .map(|c| c.to_ascii_lowercase())
            .collect();
        let mut registration = Registration::phases(Phases::REQUEST_BODY);
        registration.request_headers = Some(vec!["content-type".into()]);
        Ok((
            SchemaValidate {
                validator,
                methods,
                content_types,
            },
            registration,
        ))
    }

    fn on_request_body(&self, req: Request, body: Vec<u8>) -> BodyDecision {
        if !self.methods.contains(&req.method) {
            return BodyDecision::Next;
        }
        let content_type = req
            .header("content-type")
            .and_then(|v| std::str::from_utf8(v).ok())
            .map(|v| v.split(';').next().unwrap_or("").trim().to_ascii_lowercase());
        if !content_type
            .as_deref()
            .is_some_and(|ct| media_type_matches(&self.content_types, ct))
        {
            let detail = format!(
                "the request body must be {} (got {})",
                self.content_types.join(" or "),
                content_type.as_deref().unwrap_or("no content type")
            );
            return BodyDecision::Respond(Response::problem(415, "Unsupported Media Type", &detail));
        }
        let instance: Value = match serde_json::from_slice(&body) {
            Ok(instance) => instance,
            Err(e) => {
                return BodyDecision::Respond(Response::problem(
                    400,
                    "Bad Request",
                    &format!("the request body is not valid JSON: {e}"),
                ));
            }
        };
        // The common case first: `is_valid` stops at nothing and builds no error; only a body
        // that fails is walked again for every error and its paths.
        if self.validator.is_valid(&instance) {
            return BodyDecision::Next;
        }
        let errors: Vec<Value> = self
            .validator
            .iter_errors(&instance)
            .map(|error| {
                json!({
                    "instance-path": error.instance_path().to_string(),
                    "schema-path": error.schema_path().to_string(),
                    "evaluation-path": error.evaluation_path().to_string(),
                    "message": error.to_string(),
                })
            })
            .collect();
        if errors.is_empty() {
            return BodyDecision::Next;
        }
        let count = errors.len();
        let body = json!({
            "type": "about:blank",
            "title": "Bad Request",
            "status": 400,
            "detail": format!("the request body does not match the schema ({count} error{})", if count == 1 { "" } else { "s" }),
            "errors": errors,
        });
        BodyDecision::Respond(Response {
            status: 400,
            headers: vec![
                ("content-type".into(), b"application/problem+json".to_vec()),
                ("cache-control".into(), b"no-store".to_vec()),
            ],
            body: body.to_string().into_bytes(),
        })
    }
}

export_middleware!(SchemaValidate);
