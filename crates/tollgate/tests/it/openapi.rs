//! The document the server serves at `GET /v1/openapi.json` is valid OpenAPI 3.1, as the
//! OpenAPI Initiative's schema for 3.1 says, checked by `openapi-spec-validator` (a widely used
//! validator of OpenAPI documents, from PyPI).
//!
//! The validator is found through TOLLGATE_OPENAPI_SPEC_VALIDATOR, which `scripts/test.sh` sets
//! after installing the pinned version (`scripts/requirements-test.txt`); without it the test
//! fails.

use crate::common::Server;
use std::process::Command;

#[test]
fn the_served_document_is_valid_openapi_3_1() {
    let Some(validator) = std::env::var("TOLLGATE_OPENAPI_SPEC_VALIDATOR")
        .ok()
        .filter(|p| !p.is_empty())
    else {
        panic!(
            "TOLLGATE_OPENAPI_SPEC_VALIDATOR is not set: run the tests with `scripts/test.sh`, \
             which installs openapi-spec-validator and sets it"
        );
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let (server, _) = Server::start_demo(dir.path(), dir.path().join("server.log"));
    let doc = reqwest::blocking::get(format!("{}/v1/openapi.json", server.base))
        .and_then(|r| r.error_for_status())
        .and_then(|r| r.text())
        .expect("GET /v1/openapi.json");
    let served: serde_json::Value = serde_json::from_str(&doc).expect("the document is JSON");
    assert_eq!(served["openapi"], "3.1.0");
    let path = dir.path().join("openapi.json");
    std::fs::write(&path, &doc).expect("write the document");
    let out = Command::new(&validator)
        .args(["--schema", "3.1", "--validation-errors", "all"])
        .arg(&path)
        .output()
        .unwrap_or_else(|e| panic!("TOLLGATE_OPENAPI_SPEC_VALIDATOR={validator} cannot run: {e}"));
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && report.contains(": OK"),
        "the served document is not valid OpenAPI 3.1:\n{report}"
    );
}
