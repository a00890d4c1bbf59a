//! Identifiers, parsed once at the boundary. After parsing, no function takes a raw string
//! where an id is meant. An id is immutable and shared (`Arc<str>`): the write path copies
//! the ids of every operation into its batch's maps, rows and answers, and a copy is a
//! reference count, not an allocation.

use serde::{Deserialize, Serialize};
use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind}: {reason}")]
pub struct IdError {
    pub kind: &'static str,
    pub reason: String,
}

macro_rules! text_id {
    ($(#[$m:meta])* $name:ident, $kind:literal, $max:expr, $valid:expr,
     schema: $schema:literal, $pattern:literal, $example:literal, $description:literal) => {
        $(#[$m])*
        #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(std::sync::Arc<str>);

        impl $name {
            pub fn parse(s: &str) -> Result<Self, IdError> {
                let err = |reason: &str| IdError { kind: $kind, reason: reason.to_string() };
                if s.is_empty() {
                    return Err(err("must not be empty"));
                }
                if s.len() > $max {
                    return Err(err(concat!("longer than ", stringify!($max), " bytes")));
                }
                let valid: fn(char) -> bool = $valid;
                if let Some(c) = s.chars().find(|c| !valid(*c)) {
                    return Err(err(&format!("character {c:?} is not allowed")));
                }
                // `.` and `..` name no resource in a URL path: clients resolve them away.
                if s.bytes().all(|b| b == b'.') {
                    return Err(err("must not be only dots"));
                }
                Ok(Self(s.into()))
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(s: String) -> Result<Self, IdError> {
                Self::parse(&s)
            }
        }
        impl From<$name> for String {
            fn from(v: $name) -> String {
                v.0.as_ref().to_owned()
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        #[cfg(feature = "openapi")]
        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                text_schema($pattern, $description, $example)
            }
        }
        #[cfg(feature = "openapi")]
        impl utoipa::ToSchema for $name {
            fn name() -> std::borrow::Cow<'static, str> {
                $schema.into()
            }
        }
    };
}

fn slug_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')
}
fn endpoint_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/')
}
fn client_id_char(c: char) -> bool {
    c.is_ascii_graphic()
}

text_id!(
    /// A customer account, named by its username.
    AccountId, "username", 64, slug_char,
    schema: "Username", "^[A-Za-z0-9._-]{1,64}$", "acme",
    "An account's username: 1 to 64 letters, digits, `-`, `_` or `.`."
);
text_id!(
    /// A model endpoint such as `fal-ai/flux/dev`.
    EndpointId, "endpoint_id", 200, endpoint_char,
    schema: "EndpointId", "^[A-Za-z0-9._/-]{1,200}$", "fal-ai/flux/dev",
    "A model endpoint's id: 1 to 200 letters, digits, `-`, `_`, `.` or `/`."
);
text_id!(
    /// A request, named by the gateway (a UUID for lifecycle requests; any printable id for
    /// usage events).
    RequestId, "request_id", 128, client_id_char,
    schema: "RequestId", "^[!-~]{1,128}$", "0193e3b0-6d2a-7c41-9f0e-2b8f4c6a1d53",
    "A request's id, chosen by the gateway: 1 to 128 printable ASCII characters without \
     spaces (a UUID for the request lifecycle; UUIDv7s, which sort by time, are cheapest to \
     store); the idempotency key of every call about the request."
);
text_id!(
    /// The client's idempotency id of a purchase.
    PurchaseId, "purchase_id", 128, client_id_char,
    schema: "PurchaseId", "^[!-~]{1,128}$", "p-1",
    "The operator's idempotency id of a purchase: 1 to 128 printable ASCII characters \
     without spaces, unique per account."
);
text_id!(
    /// The operator's idempotency id of an adjustment (a correction of a balance).
    AdjustmentId, "adjustment_id", 128, client_id_char,
    schema: "AdjustmentId", "^[!-~]{1,128}$", "adj-1",
    "The operator's idempotency id of an adjustment: 1 to 128 printable ASCII characters \
     without spaces, unique per account."
);
text_id!(
    /// The public half of an API key.
    ApiKeyId, "key_id", 64, slug_char,
    schema: "KeyId", "^[A-Za-z0-9._-]{1,64}$", "2d1c8f0e-5b3a-4e7d-9c61-0f8a7b6e5d43",
    "The public half of a key: 1 to 64 letters, digits, `-`, `_` or `.`."
);
text_id!(
    /// A GPU or CPU machine type such as `GPU-H100`.
    MachineType, "machine_type", 64, slug_char,
    schema: "MachineType", "^[A-Za-z0-9._-]{1,64}$", "GPU-H100",
    "A machine type of the catalog's `[machines]` table: 1 to 64 letters, digits, `-`, `_` \
     or `.`."
);

text_id!(
    /// A serverless runner, named by the platform that runs it.
    RunnerId, "runner_id", 100, client_id_char,
    schema: "RunnerId", "^[!-~]{1,100}$", "rn-7f3a2c",
    "A runner's id, chosen by the platform: 1 to 100 printable ASCII characters without \
     spaces, unique across the platform."
);
text_id!(
    /// The platform's idempotency id of a runner event.
    RunnerEventId, "event_id", 128, client_id_char,
    schema: "RunnerEventId", "^[!-~]{1,128}$", "re-0001",
    "A runner event's id, chosen by the platform: 1 to 128 printable ASCII characters \
     without spaces; an event sent again with the same id is a duplicate."
);
text_id!(
    /// A customer's serverless app (its deployed name, without the owner), such as
    /// `my-app-dev`.
    AppName, "app", 64, slug_char,
    schema: "AppName", "^[A-Za-z0-9._-]{1,64}$", "my-app",
    "A serverless app's name as deployed (without the owner): 1 to 64 letters, digits, `-`, \
     `_` or `.`."
);
text_id!(
    /// The deployment environment of a serverless app, such as `production`.
    EnvironmentName, "environment", 32, slug_char,
    schema: "EnvironmentName", "^[A-Za-z0-9._-]{1,32}$", "production",
    "A serverless app's environment: 1 to 32 letters, digits, `-`, `_` or `.`."
);

text_id!(
    /// A spending limit of an account (`lim_...`, chosen by whoever creates it).
    LimitId, "limit_id", 64, slug_char,
    schema: "LimitId", "^[A-Za-z0-9._-]{1,64}$", "lim_0b1c2d3e4f5a6b7c8d9e0f1a",
    "A spending limit's id: 1 to 64 letters, digits, `-`, `_` or `.` (tollgate gives \
     `lim_` and 24 random hexadecimal digits)."
);

impl RequestId {
    /// The id of a request of the lifecycle API: a UUID in its one canonical spelling (lower
    /// case, hyphenated: `0193e3b0-6d2a-7c41-9f0e-2b8f4c6a1d53`), so that one request cannot be
    /// submitted, and billed, again under another spelling of the same UUID.
    pub fn parse_uuid(s: &str) -> Result<RequestId, IdError> {
        let canonical = s.len() == 36
            && s.bytes().enumerate().all(|(i, b)| match i {
                8 | 13 | 18 | 23 => b == b'-',
                _ => b.is_ascii_digit() || (b'a'..=b'f').contains(&b),
            });
        if !canonical {
            return Err(IdError {
                kind: "request_id",
                reason: format!(
                    "`{s}` is not a UUID in lower-case hyphenated form \
                     (0193e3b0-6d2a-7c41-9f0e-2b8f4c6a1d53)"
                ),
            });
        }
        RequestId::parse(s)
    }
}

/// The schema of a text id: a string with its pattern, description and an example.
#[cfg(feature = "openapi")]
fn text_schema(
    pattern: &str,
    description: &str,
    example: &str,
) -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(pattern))
        .description(Some(description))
        .examples([example])
        .into()
}

/// The most characters a key's alias may have: fal's limit for `POST /keys`, so fal's clients
/// work unchanged; the operator's key creation has the same rule.
pub const MAX_ALIAS_CHARS: usize = 255;

/// A key's alias, as its owner names it: 1 to [`MAX_ALIAS_CHARS`] characters of text, any
/// script, but no control characters (a newline or an escape code in a name shown in lists and
/// pages is never intended). Whoever shows it escapes it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct KeyAlias(std::sync::Arc<str>);

impl KeyAlias {
    pub fn parse(s: &str) -> Result<Self, IdError> {
        let err = |reason: String| IdError {
            kind: "alias",
            reason,
        };
        let chars = s.chars().count();
        if !(1..=MAX_ALIAS_CHARS).contains(&chars) {
            return Err(err(format!(
                "must be 1 to {MAX_ALIAS_CHARS} characters, got {chars}"
            )));
        }
        if let Some(c) = s.chars().find(|c| c.is_control()) {
            return Err(err(format!("control character {c:?} is not allowed")));
        }
        Ok(KeyAlias(s.into()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for KeyAlias {
    type Error = IdError;
    fn try_from(s: String) -> Result<Self, IdError> {
        Self::parse(&s)
    }
}
impl From<KeyAlias> for String {
    fn from(v: KeyAlias) -> String {
        v.0.as_ref().to_owned()
    }
}
impl fmt::Display for KeyAlias {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for KeyAlias {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        ObjectBuilder::new()
            .schema_type(Type::String)
            .min_length(Some(1))
            .max_length(Some(MAX_ALIAS_CHARS))
            .pattern(Some("^[^\\u0000-\\u001F\\u007F-\\u009F]*$"))
            .description(Some(
                "A friendly name for the key: 1 to 255 characters (fal's limit), no control characters.",
            ))
            .examples(["Production Key"])
            .into()
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for KeyAlias {
    fn name() -> std::borrow::Cow<'static, str> {
        "KeyAlias".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_validated_at_parse() {
        assert!(EndpointId::parse("fal-ai/flux/dev").is_ok());
        assert!(EndpointId::parse("").is_err());
        assert!(EndpointId::parse("fal ai").is_err());
        assert!(AccountId::parse("acme").is_ok());
        assert!(AccountId::parse("acme/x").is_err());
        assert!(RequestId::parse(&"x".repeat(129)).is_err());
        assert!(RequestId::parse("has space").is_err());
        for dots in [".", "..", "..."] {
            assert!(AccountId::parse(dots).is_err(), "{dots}");
            assert!(RequestId::parse(dots).is_err(), "{dots}");
        }
        assert!(AccountId::parse("a.b").is_ok());
    }

    #[test]
    fn lifecycle_ids_are_uuids_in_one_spelling() {
        let id = "0193e3b0-6d2a-7c41-9f0e-2b8f4c6a1d53";
        assert_eq!(RequestId::parse_uuid(id).unwrap().as_str(), id);
        for other in [
            "0193E3B0-6D2A-7C41-9F0E-2B8F4C6A1D53",
            "0193e3b06d2a7c419f0e2b8f4c6a1d53",
            "{0193e3b0-6d2a-7c41-9f0e-2b8f4c6a1d53}",
            "urn:uuid:0193e3b0-6d2a-7c41-9f0e-2b8f4c6a1d53",
            "0193e3b0-6d2a-7c41-9f0e-2b8f4c6a1d5g",
            "not-a-uuid",
        ] {
            assert!(RequestId::parse_uuid(other).is_err(), "{other}");
        }
    }

    #[test]
    fn aliases_are_short_text_without_control_characters() {
        assert!(KeyAlias::parse("Production key — Zürich").is_ok());
        assert!(KeyAlias::parse(&"é".repeat(255)).is_ok());
        assert!(KeyAlias::parse(&"é".repeat(256)).is_err());
        assert!(KeyAlias::parse("").is_err());
        for bad in ["a\nb", "tab\there", "esc\u{1b}[31m", "nul\u{0}"] {
            assert!(KeyAlias::parse(bad).is_err(), "{bad:?}");
        }
    }
}
