//! Query strings, read the way fal's clients write them.
//!
//! fal's clients send lists either repeated (`?endpoint_id=a&endpoint_id=b`), comma-separated
//! (`?endpoint_id=a,b`) or in the bracket form some HTTP libraries produce (`?expand[]=x`), and
//! booleans as the strings `true`/`false`. Handlers read parameters through [`Query`] so that all
//! of those spellings behave the same everywhere, and so that every bad parameter is answered
//! with a `validation_error` naming it (`"field": "<name>"`) before anything is read or written.

use crate::error::ApiError;
use tollgate_query::Cursor;

/// fal's bound on the ids one list parameter may name (`endpoint_id`, `request_id`,
/// `api_key_id`, `login_username`: 1-50).
pub const MAX_IDS: usize = 50;

/// A parsed query string: percent-decoded pairs (`form_urlencoded` semantics, so `+` is a
/// space), in the order given, where `name[]` is read as `name`.
#[derive(Clone, Debug, Default)]
pub struct Query {
    pairs: Vec<(String, String)>,
}

impl Query {
    /// Parses the raw query (axum `RawQuery`), refusing any parameter not in `allowed`: a typo
    /// such as `endpoint=` must not silently widen a query to everything.
    pub fn parse(raw: Option<&str>, allowed: &[&str]) -> Result<Query, ApiError> {
        let mut pairs = Vec::new();
        for (key, value) in form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
            let key = key.strip_suffix("[]").unwrap_or(&key).to_string();
            if !allowed.contains(&key.as_str()) {
                let message = if allowed.is_empty() {
                    format!("unknown query parameter '{key}': this operation takes none")
                } else {
                    format!(
                        "unknown query parameter '{key}'; allowed: {}",
                        allowed.join(", ")
                    )
                };
                return Err(ApiError::validation(message).with("field", key));
            }
            pairs.push((key, value.into_owned()));
        }
        Ok(Query { pairs })
    }

    /// Every raw value given for `name`, in order.
    fn values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.pairs
            .iter()
            .filter(move |(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Whether `name` was given at all (even empty).
    pub fn has(&self, name: &str) -> bool {
        self.values(name).next().is_some()
    }

    /// A single-valued parameter; repeating it is a validation_error naming it (which of two
    /// values was meant is a guess we refuse to make).
    pub fn one(&self, name: &str) -> Result<Option<&str>, ApiError> {
        let mut values = self
            .pairs
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str());
        let first = values.next();
        if values.next().is_some() {
            return Err(ApiError::validation(format!(
                "query parameter '{name}' must be given once"
            ))
            .with("field", name));
        }
        Ok(first)
    }

    /// A list parameter, given repeated (`?a=x&a=y`) or comma-separated (`?a=x,y`) or both;
    /// items trimmed, empty items refused, duplicates dropped keeping first order; more than
    /// `max` items is a validation_error naming the parameter. Absent -> empty vec.
    pub fn list(&self, name: &str, max: usize) -> Result<Vec<String>, ApiError> {
        let mut items: Vec<String> = Vec::new();
        for value in self.values(name) {
            for item in value.split(',') {
                let item = item.trim();
                if item.is_empty() {
                    return Err(ApiError::validation(format!(
                        "query parameter '{name}' has an empty item; give 1-{max} non-empty values"
                    ))
                    .with("field", name));
                }
                if !items.iter().any(|seen| seen == item) {
                    items.push(item.to_string());
                }
            }
        }
        if items.len() > max {
            return Err(ApiError::validation(format!(
                "query parameter '{name}' takes 1-{max} values, got {}",
                items.len()
            ))
            .with("field", name));
        }
        Ok(items)
    }

    /// `limit`: absent -> `default`; must be an integer 1..=max, else validation_error.
    pub fn limit(&self, default: usize, max: usize) -> Result<usize, ApiError> {
        let Some(text) = self.one("limit")? else {
            return Ok(default);
        };
        let parsed = if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
            text.parse::<usize>().ok()
        } else {
            None
        };
        match parsed {
            Some(n) if (1..=max).contains(&n) => Ok(n),
            _ => Err(ApiError::validation(format!(
                "limit must be an integer 1-{max}, got '{text}'"
            ))
            .with("field", "limit")),
        }
    }

    /// `expand` as a list (repeated or comma-separated), each value checked against `allowed`.
    /// Absent -> None, so a handler can apply its own default (usage defaults to `time_series`).
    pub fn expand(&self, allowed: &[&str]) -> Result<Option<Vec<String>>, ApiError> {
        if !self.has("expand") {
            return Ok(None);
        }
        // Duplicates are dropped, so at most every allowed value once; unknown values are
        // refused below, so the count check never fires before the better message.
        let items = self.list("expand", usize::MAX)?;
        if let Some(bad) = items.iter().find(|i| !allowed.contains(&i.as_str())) {
            return Err(ApiError::validation(format!(
                "unknown expand value '{bad}'; allowed: {}",
                allowed.join(", ")
            ))
            .with("field", "expand"));
        }
        Ok(Some(items))
    }

    /// A "true"/"false" parameter (fal sends strings); absent -> `default`; anything else is
    /// refused rather than guessed.
    pub fn flag(&self, name: &str, default: bool) -> Result<bool, ApiError> {
        match self.one(name)? {
            None => Ok(default),
            Some("true") => Ok(true),
            Some("false") => Ok(false),
            Some(other) => Err(ApiError::validation(format!(
                "query parameter '{name}' must be 'true' or 'false', got '{other}'"
            ))
            .with("field", name)),
        }
    }

    /// The `cursor` parameter, as the previous page gave it (the read that takes it checks
    /// it); absent -> None (the first page).
    pub fn cursor(&self) -> Result<Option<Cursor>, ApiError> {
        Ok(self.one("cursor")?.map(Cursor::new))
    }

    /// A list parameter whose items each parse into a domain type (`endpoint_id`,
    /// `api_key_id`, `request_id`): 1 to [`MAX_IDS`] of them; a bad item names the parameter.
    pub fn ids<T, E: std::fmt::Display>(
        &self,
        name: &str,
        parse: impl Fn(&str) -> Result<T, E>,
    ) -> Result<Vec<T>, ApiError> {
        self.list(name, MAX_IDS)?
            .iter()
            .map(|s| {
                parse(s).map_err(|e| {
                    ApiError::invalid(name, format!("{name}: `{s}` is not valid: {e}"))
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const ALLOWED: &[&str] = &["endpoint_id", "limit", "cursor", "expand", "flag", "q"];

    fn q(raw: &str) -> Query {
        Query::parse(Some(raw), ALLOWED).expect("parses")
    }

    fn field(e: &ApiError) -> serde_json::Value {
        e.extra.get("field").cloned().unwrap_or(json!(null))
    }

    #[test]
    fn lists_mix_repeated_and_comma_forms_trim_and_dedupe() {
        let query = q("endpoint_id=a,%20b&endpoint_id=c&endpoint_id=a&endpoint_id=b+,d");
        assert_eq!(query.list("endpoint_id", 50).unwrap(), ["a", "b", "c", "d"]);
        assert!(q("").list("endpoint_id", 50).unwrap().is_empty());
        assert!(Query::parse(None, ALLOWED)
            .unwrap()
            .list("endpoint_id", 50)
            .unwrap()
            .is_empty());
        let e = q("endpoint_id=a,,b").list("endpoint_id", 50).unwrap_err();
        assert_eq!(e.kind, "validation_error");
        assert_eq!(field(&e), json!("endpoint_id"));
    }

    #[test]
    fn lists_allow_fifty_items_and_refuse_fifty_one() {
        let ids = |n: usize| (0..n).map(|i| format!("m{i}")).collect::<Vec<_>>();
        let fifty = ids(50).join(",");
        assert_eq!(
            q(&format!("endpoint_id={fifty}"))
                .list("endpoint_id", 50)
                .unwrap()
                .len(),
            50
        );
        let repeated: Vec<String> = ids(51).iter().map(|i| format!("endpoint_id={i}")).collect();
        let e = q(&repeated.join("&")).list("endpoint_id", 50).unwrap_err();
        assert_eq!(field(&e), json!("endpoint_id"));
        assert!(e.message.contains("1-50"), "{}", e.message);
        // 51 given but only 50 distinct: fine.
        let dup = format!("endpoint_id={fifty}&endpoint_id=m0");
        assert_eq!(q(&dup).list("endpoint_id", 50).unwrap().len(), 50);
    }

    #[test]
    fn unknown_parameter_is_refused_by_name() {
        let e = Query::parse(Some("endpoint_id=a&endpoint=b"), ALLOWED).unwrap_err();
        assert_eq!(e.kind, "validation_error");
        assert_eq!(field(&e), json!("endpoint"));
        let e = Query::parse(Some("x=1"), &[]).unwrap_err();
        assert_eq!(field(&e), json!("x"));
    }

    #[test]
    fn bracket_names_read_as_plain_names() {
        let query = q("expand[]=summary&expand%5B%5D=time_series&endpoint_id[]=x");
        assert_eq!(
            query.expand(&["time_series", "summary"]).unwrap(),
            Some(vec!["summary".to_string(), "time_series".to_string()])
        );
        assert_eq!(query.list("endpoint_id", 50).unwrap(), ["x"]);
    }

    #[test]
    fn values_are_percent_decoded_and_plus_is_space() {
        let query = q("endpoint_id=fal-ai%2Fflux%2Fdev&q=flux+dev");
        assert_eq!(query.one("endpoint_id").unwrap(), Some("fal-ai/flux/dev"));
        assert_eq!(query.one("q").unwrap(), Some("flux dev"));
        assert_eq!(query.one("cursor").unwrap(), None);
    }

    #[test]
    fn repeated_single_parameter_is_refused() {
        let e = q("q=a&q=b").one("q").unwrap_err();
        assert_eq!(field(&e), json!("q"));
    }

    #[test]
    fn limit_bounds() {
        assert_eq!(q("").limit(20, 100).unwrap(), 20);
        assert_eq!(q("limit=1").limit(20, 100).unwrap(), 1);
        assert_eq!(q("limit=100").limit(20, 100).unwrap(), 100);
        for bad in [
            "0",
            "101",
            "-1",
            "abc",
            "",
            "1.5",
            "99999999999999999999999",
        ] {
            let e = q(&format!("limit={bad}")).limit(20, 100).unwrap_err();
            assert_eq!(field(&e), json!("limit"), "limit={bad}");
            assert!(e.message.contains("1-100"), "{}", e.message);
        }
    }

    #[test]
    fn expand_checks_values_and_absent_is_none() {
        let allowed = ["time_series", "summary"];
        assert_eq!(q("").expand(&allowed).unwrap(), None);
        assert_eq!(
            q("expand=summary,time_series,summary")
                .expand(&allowed)
                .unwrap(),
            Some(vec!["summary".to_string(), "time_series".to_string()])
        );
        let e = q("expand=summary,bogus").expand(&allowed).unwrap_err();
        assert_eq!(field(&e), json!("expand"));
        assert!(e.message.contains("time_series, summary"), "{}", e.message);
    }

    #[test]
    fn flags_are_true_or_false_strings() {
        assert!(q("").flag("flag", true).unwrap());
        assert!(!q("flag=false").flag("flag", true).unwrap());
        assert!(q("flag=true").flag("flag", false).unwrap());
        let e = q("flag=1").flag("flag", true).unwrap_err();
        assert_eq!(field(&e), json!("flag"));
    }
}
