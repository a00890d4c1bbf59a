//! Validating a JSON value against one schema of an OpenAPI document (tollgate's or fal's).

use serde_json::Value;

/// Validates `instance` against `schema`, whose `$ref`s point into `document`'s components: the
/// schema is compiled as a root that carries the components beside it. `formats` also checks
/// `format` keywords (date-time, ...). The error lists every failure with its place.
pub fn validate(
    document: &Value,
    schema: &Value,
    instance: &Value,
    formats: bool,
) -> Result<(), String> {
    let mut root = schema.clone();
    root.as_object_mut()
        .expect("a schema object")
        .insert("components".into(), document["components"].clone());
    let validator = jsonschema::draft202012::options()
        .should_validate_formats(formats)
        .build(&root)
        .map_err(|e| format!("the schema does not compile: {e}"))?;
    let errors: Vec<String> = validator
        .iter_errors(instance)
        .map(|e| format!("{e} (at `{}`)", e.instance_path))
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("\n  "))
    }
}
