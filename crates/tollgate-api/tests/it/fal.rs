//! fal's published Platform API schemas (docs/reference/fal-platform-openapi.json):
//! customer-facing answers are checked against the schema fal declares for their operation and
//! status, so an answer a fal client could not read fails even if tollgate's own document
//! agreed with it.

use crate::harness::Resp;
use serde_json::Value;

const FAL_SPEC: &str = include_str!("../../../../docs/reference/fal-platform-openapi.json");

/// fal's published document.
pub struct FalSpec {
    root: Value,
}

impl FalSpec {
    pub fn load() -> FalSpec {
        FalSpec {
            root: serde_json::from_str(FAL_SPEC).expect("fal's document is JSON"),
        }
    }

    pub fn operation(&self, method: &str, path: &str) -> &Value {
        let op = &self.root["paths"][path][method];
        assert!(op.is_object(), "fal documents no {method} {path}");
        op
    }

    /// Validates `instance` against `schema`, one of fal's schemas.
    pub fn validate(&self, schema: &Value, instance: &Value) -> Result<(), String> {
        crate::schema::validate(&self.root, schema, instance, false)
    }

    /// fal's schema of the answer `status` of `method path`. An error status fal does not list
    /// for the operation is checked against one it lists (fal's error envelope is the same).
    pub fn response_schema(&self, method: &str, path: &str, status: u16) -> Value {
        let responses = &self.operation(method, path)["responses"];
        let documented = &responses[status.to_string()];
        let response = if documented.is_object() || status < 400 {
            documented
        } else {
            responses
                .as_object()
                .expect("responses")
                .iter()
                .find(|(s, _)| s.starts_with('4') || s.starts_with('5'))
                .map(|(_, r)| r)
                .expect("fal documents an error answer")
        };
        response["content"]["application/json"]["schema"].clone()
    }

    /// Asserts that an answer of tollgate matches fal's schema for it.
    #[track_caller]
    pub fn check(&self, method: &str, path: &str, r: &Resp) {
        let schema = self.response_schema(method, path, r.status.as_u16());
        assert!(
            schema.is_object(),
            "fal documents no JSON body for {method} {path} {}",
            r.status
        );
        if let Err(e) = self.validate(&schema, &r.body) {
            panic!(
                "{method} {path} {}: fal's schema refuses the answer:\n  {e}\n{}",
                r.status, r.text
            );
        }
    }

    /// Whether fal's request schema of `method path` accepts `body`.
    pub fn accepts_request(&self, method: &str, path: &str, body: &Value) -> bool {
        let schema =
            &self.operation(method, path)["requestBody"]["content"]["application/json"]["schema"];
        self.validate(schema, body).is_ok()
    }
}

/// Asserts that `body` validates against fal's schema for `method path` (fal's path, without
/// `/v1`) answering `status`.
#[track_caller]
pub fn assert_fal_schema(method: &str, path: &str, status: u16, body: &Value) {
    let spec = FalSpec::load();
    let method = method.to_lowercase();
    let schema = spec.response_schema(&method, path, status);
    assert!(
        schema.is_object(),
        "fal documents no JSON body for {method} {path} {status}"
    );
    if let Err(e) = spec.validate(&schema, body) {
        panic!("{method} {path} {status}: fal's schema refuses the answer:\n  {e}\nbody: {body}");
    }
}
