//! The outcome policy: which finished requests are billed, and for what.

use serde::{Deserialize, Serialize};

/// What a 4xx answer costs on an endpoint.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FourXxPolicy {
    /// Client errors are free (the default).
    #[default]
    Free,
    /// Bill the inference seconds already spent, at the endpoint's machine price.
    InferenceSeconds,
}

/// How a finished request is billed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Billing {
    /// Rate the output with the endpoint's price.
    Output,
    /// Bill inference seconds x GPUs at the machine price (a 4xx under that policy).
    InferenceSeconds,
    /// Nothing is billed (5xx, or a 4xx under the default policy).
    Free,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("status_code {0} is not a final HTTP status (200-599)")]
pub struct BadStatus(pub u16);

/// `code` if it is a final HTTP status (200-599), the only kind a finished request reports.
pub fn final_status(code: u16) -> Result<u16, BadStatus> {
    if (200..=599).contains(&code) {
        Ok(code)
    } else {
        Err(BadStatus(code))
    }
}

/// Server errors are never billed; queue time and cold starts never reach rating at all
/// (only inference seconds are reported or measured).
pub fn billing_for(status_code: u16, four_xx: FourXxPolicy) -> Result<Billing, BadStatus> {
    match status_code {
        200..=399 => Ok(Billing::Output),
        400..=499 => Ok(match four_xx {
            FourXxPolicy::Free => Billing::Free,
            FourXxPolicy::InferenceSeconds => Billing::InferenceSeconds,
        }),
        500..=599 => Ok(Billing::Free),
        other => Err(BadStatus(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_errors_are_free_and_client_errors_follow_the_policy() {
        use FourXxPolicy::*;
        assert_eq!(billing_for(200, Free), Ok(Billing::Output));
        assert_eq!(billing_for(500, InferenceSeconds), Ok(Billing::Free));
        assert_eq!(billing_for(503, Free), Ok(Billing::Free));
        assert_eq!(billing_for(422, Free), Ok(Billing::Free));
        assert_eq!(
            billing_for(422, InferenceSeconds),
            Ok(Billing::InferenceSeconds)
        );
        assert_eq!(billing_for(99, Free), Err(BadStatus(99)));
        assert_eq!(billing_for(600, Free), Err(BadStatus(600)));
    }
}
