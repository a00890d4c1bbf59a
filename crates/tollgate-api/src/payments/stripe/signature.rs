//! The `Stripe-Signature` header of the provider's webhook events:
//! `t=<unix seconds>,v1=<hex>[,v1=<hex>...][,v0=<hex>]`, where each `v1` is the hex of
//! HMAC-SHA256 over `"<t>.<raw body>"` keyed with a signing secret of the endpoint (the whole
//! `whsec_...` string). While a secret is rolled, the provider signs with the old and the new one
//! (two `v1`); tollgate is configured with every secret it accepts. `v0` (test-mode legacy)
//! and unknown schemes are ignored.
//!
//! An event is accepted when some `v1` matches some configured secret (compared in constant
//! time) and its `t` is within [`TOLERANCE_S`] of the engine's clock, either way: a captured
//! event cannot be replayed later, and the tests move the clock.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use tollgate_core::Timestamp;

/// How far a signature's time may be from now, in seconds (the provider's libraries' default).
pub const TOLERANCE_S: i64 = 300;

/// Why a signature was refused. The text never shows a secret or the signatures.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SignatureError {
    /// No `t=` or no `v1=` in the header, or a value that is not what it should be.
    Malformed(&'static str),
    /// No `v1` signature matches any configured secret.
    NoMatch,
    /// Signed at `t`, more than the tolerance away from `now` (both unix seconds).
    Stale { t: i64, now: i64 },
}

impl std::fmt::Display for SignatureError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SignatureError::Malformed(why) => write!(f, "the Stripe-Signature header {why}"),
            SignatureError::NoMatch => f.write_str(
                "no signature of the Stripe-Signature header matches a configured webhook \
                 signing secret ([stripe] webhook_secrets)",
            ),
            SignatureError::Stale { t, now } => write!(
                f,
                "the event was signed at {t}, {} s from now ({now}): more than the {TOLERANCE_S} \
                 s allowed",
                (now - t).abs()
            ),
        }
    }
}

fn mac(secret: &str, t: i64, body: &[u8]) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The header the provider would send for `body` signed with `secret` at `t` (unix seconds):
/// `t=<t>,v1=<hex>`. For the tests and the stand-in of the provider.
pub fn sign(body: &[u8], secret: &str, t: i64) -> String {
    let sig = mac(secret, t, body).finalize().into_bytes();
    format!("t={t},v1={}", hex::encode(sig))
}

/// Verifies `header` over the raw `body` against every secret of `secrets`, at `now` (the
/// engine's clock). Returns the signature's time.
pub fn verify(
    body: &[u8],
    header: &str,
    secrets: &[String],
    now: Timestamp,
) -> Result<i64, SignatureError> {
    let mut t: Option<i64> = None;
    let mut v1: Vec<Vec<u8>> = Vec::new();
    for part in header.split(',') {
        let Some((key, value)) = part.trim().split_once('=') else {
            return Err(SignatureError::Malformed(
                "has a part that is not key=value",
            ));
        };
        match key {
            "t" => {
                if t.is_some() {
                    return Err(SignatureError::Malformed("names its time twice"));
                }
                let parsed = value
                    .parse::<i64>()
                    .ok()
                    .filter(|_| !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()));
                t = Some(
                    parsed.ok_or(SignatureError::Malformed("has a time that is not a number"))?,
                );
            }
            // A `v1` that is not hex cannot match; the others may.
            "v1" => v1.extend(hex::decode(value).ok()),
            _ => {}
        }
    }
    let t = t.ok_or(SignatureError::Malformed("has no time (t=)"))?;
    if v1.is_empty() {
        return Err(SignatureError::Malformed("has no v1 signature"));
    }
    let matched = secrets.iter().any(|secret| {
        let expected = mac(secret, t, body);
        // `verify_slice` compares in constant time.
        v1.iter()
            .any(|sig| expected.clone().verify_slice(sig).is_ok())
    });
    if !matched {
        return Err(SignatureError::NoMatch);
    }
    let now_s = now.0.div_euclid(1000);
    if (now_s - t).abs() > TOLERANCE_S {
        return Err(SignatureError::Stale { t, now: now_s });
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &[u8] = br#"{"id":"evt_1","type":"charge.refunded"}"#;

    fn secrets(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_signature_is_hmac_sha256_of_the_time_a_dot_and_the_body_in_hex() {
        // Computed independently: HMAC-SHA256("whsec_test", "1700000000.{body}").
        let mut m = Hmac::<Sha256>::new_from_slice(b"whsec_test").unwrap();
        m.update(b"1700000000.");
        m.update(BODY);
        let hex = hex::encode(m.finalize().into_bytes());
        assert_eq!(
            sign(BODY, "whsec_test", 1_700_000_000),
            format!("t=1700000000,v1={hex}")
        );
    }

    #[test]
    fn any_v1_against_any_secret_within_the_tolerance_either_way() {
        let now = Timestamp(1_700_000_000_000);
        let header = sign(BODY, "whsec_new", 1_700_000_000);
        let both = secrets(&["whsec_old", "whsec_new"]);
        assert_eq!(verify(BODY, &header, &both, now), Ok(1_700_000_000));
        // Two v1 (a roll at the provider) and a v0: the one that matches is enough.
        let old = sign(BODY, "whsec_old", 1_700_000_000);
        let rolled = format!(
            "{},v1={},v0=deadbeef",
            sign(BODY, "whsec_gone", 1_700_000_000),
            old.split_once("v1=").unwrap().1
        );
        assert_eq!(
            verify(BODY, &rolled, &secrets(&["whsec_old"]), now),
            Ok(1_700_000_000)
        );
        // 300 s either way is in; 301 is not.
        for (t, ok) in [
            (1_700_000_300, true),
            (1_699_999_700, true),
            (1_700_000_301, false),
            (1_699_999_699, false),
        ] {
            let h = sign(BODY, "whsec_new", t);
            assert_eq!(verify(BODY, &h, &both, now).is_ok(), ok, "{t}");
        }
        assert_eq!(
            verify(BODY, &sign(BODY, "whsec_new", 1_699_999_000), &both, now),
            Err(SignatureError::Stale {
                t: 1_699_999_000,
                now: 1_700_000_000
            })
        );
    }

    #[test]
    fn another_secret_another_body_or_a_malformed_header_is_refused() {
        let now = Timestamp(1_700_000_000_000);
        let ok = sign(BODY, "whsec_a", 1_700_000_000);
        let a = secrets(&["whsec_a"]);
        assert_eq!(
            verify(BODY, &ok, &secrets(&["whsec_b"]), now),
            Err(SignatureError::NoMatch)
        );
        assert_eq!(verify(BODY, &ok, &[], now), Err(SignatureError::NoMatch));
        assert_eq!(
            verify(b"{\"id\":\"evt_2\"}", &ok, &a, now),
            Err(SignatureError::NoMatch)
        );
        // The time is signed: changing it breaks the signature.
        let moved = ok.replace("t=1700000000", "t=1700000001");
        assert_eq!(verify(BODY, &moved, &a, now), Err(SignatureError::NoMatch));
        for bad in [
            "",
            "v1=abcd",
            "t=1700000000",
            "t=1700000000,v0=abcd",
            "t=soon,v1=abcd",
            "t=-5,v1=abcd",
            "t=1,t=2,v1=abcd",
            "t=1700000000;v1=abcd",
        ] {
            assert!(
                matches!(
                    verify(BODY, bad, &a, now),
                    Err(SignatureError::Malformed(_))
                ),
                "{bad:?}"
            );
        }
        // A v1 that is not hex is no match (there is no other).
        assert_eq!(
            verify(BODY, "t=1700000000,v1=zz", &a, now),
            Err(SignatureError::Malformed("has no v1 signature"))
        );
        let e = verify(BODY, &ok, &secrets(&["whsec_b"]), now).unwrap_err();
        assert!(!e.to_string().contains("whsec"), "{e}");
    }
}
