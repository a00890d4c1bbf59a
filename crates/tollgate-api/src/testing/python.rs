//! The Python interpreter the tests run Python tools with: the one `scripts/test.sh` installs
//! the pinned packages into and names in `TOLLGATE_PYTHON`.

use std::process::Command;

/// The Python named by `TOLLGATE_PYTHON`, checked to import `module`. Fails the test (never
/// skips it) when it is unset, does not run or lacks the module, saying so with `how` (how to
/// get it).
pub fn with(module: &str, how: &str) -> String {
    let Some(path) = std::env::var("TOLLGATE_PYTHON")
        .ok()
        .filter(|p| !p.is_empty())
    else {
        panic!("TOLLGATE_PYTHON is not set: {how}");
    };
    let out = Command::new(&path)
        .args(["-c", &format!("import {module}")])
        .output()
        .unwrap_or_else(|e| panic!("TOLLGATE_PYTHON={path} does not run ({e}): {how}"));
    assert!(
        out.status.success(),
        "TOLLGATE_PYTHON={path} has no {module} ({}): {how}",
        String::from_utf8_lossy(&out.stderr)
    );
    path
}
