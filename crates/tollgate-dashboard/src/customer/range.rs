//! The range controls the usage and serverless pages share: preset ranges as links, a start
//! and an end date (both included) in an IANA time zone (and, on the usage page, an API key),
//! checked into whole local days ([`View`]) and shown back as typed when refused. A range is
//! at most [`MAX_DAYS`]; anything a page cannot show (an unknown zone, an end before the
//! start, a range too long, a key that is not the account's) is said in words, for the page
//! to answer 400 with the form to correct it.

use chrono::{DateTime, Datelike, Days, NaiveDate, Utc};
use chrono_tz::Tz;
use maud::{html, Markup};
use tollgate_core::Timestamp;
use tollgate_query::timeframe::{parse_timezone, Moment, RangeSpec, Timeframe};
use tollgate_store::{ApiKeyRecord, Scope};

/// The longest range shown at once, in days: a (leap) year.
pub const MAX_DAYS: i64 = 366;

/// Zones offered in the time-zone field's suggestions; any IANA name may be typed.
pub const COMMON_ZONES: &[&str] = &[
    "UTC",
    "America/Los_Angeles",
    "America/Denver",
    "America/Chicago",
    "America/New_York",
    "America/Toronto",
    "America/Mexico_City",
    "America/Sao_Paulo",
    "Europe/London",
    "Europe/Dublin",
    "Europe/Lisbon",
    "Europe/Paris",
    "Europe/Berlin",
    "Europe/Amsterdam",
    "Europe/Madrid",
    "Europe/Rome",
    "Europe/Stockholm",
    "Europe/Warsaw",
    "Europe/Istanbul",
    "Africa/Lagos",
    "Africa/Johannesburg",
    "Asia/Dubai",
    "Asia/Kolkata",
    "Asia/Singapore",
    "Asia/Shanghai",
    "Asia/Hong_Kong",
    "Asia/Seoul",
    "Asia/Tokyo",
    "Australia/Sydney",
    "Pacific/Auckland",
];

/// The ranges offered as links.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Preset {
    Today,
    Last7Days,
    ThisMonth,
    LastMonth,
}

impl Preset {
    pub const ALL: [Preset; 4] = [
        Preset::Today,
        Preset::Last7Days,
        Preset::ThisMonth,
        Preset::LastMonth,
    ];

    /// Its spelling in the `range` parameter.
    pub fn slug(self) -> &'static str {
        match self {
            Preset::Today => "today",
            Preset::Last7Days => "7d",
            Preset::ThisMonth => "month",
            Preset::LastMonth => "last-month",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Preset::Today => "Today",
            Preset::Last7Days => "Last 7 days",
            Preset::ThisMonth => "This month",
            Preset::LastMonth => "Last month",
        }
    }

    pub fn parse(slug: &str) -> Option<Preset> {
        Preset::ALL.into_iter().find(|p| p.slug() == slug)
    }

    /// Its first and last day (both included) when it is `today`: this month runs to today.
    pub fn days(self, today: NaiveDate) -> (NaiveDate, NaiveDate) {
        let month_start = today.with_day(1).unwrap_or(today);
        match self {
            Preset::Today => (today, today),
            Preset::Last7Days => (today.checked_sub_days(Days::new(6)).unwrap_or(today), today),
            Preset::ThisMonth => (month_start, today),
            Preset::LastMonth => {
                let last = month_start.pred_opt().unwrap_or(month_start);
                (last.with_day(1).unwrap_or(last), last)
            }
        }
    }
}

/// The range shown when none is asked for.
pub const DEFAULT_PRESET: Preset = Preset::ThisMonth;

/// The parameters as the visitor sent them (the form shows them back as typed): `range` (a
/// preset), `start` and `end` (dates, both included: they win over `range`), `tz` (an IANA
/// zone, default UTC), `key` (an API key id, on the usage page; empty: every key) and `app`
/// (on the serverless page: the app whose runners are shown; empty: the first).
#[derive(Clone, Debug, Default)]
pub struct Asked {
    pub range: String,
    pub start: String,
    pub end: String,
    pub tz: String,
    pub key: String,
    pub app: String,
}

impl Asked {
    /// The first value of each parameter; unknown ones are ignored.
    pub fn parse(raw: Option<&str>) -> Asked {
        let mut asked = Asked::default();
        let mut seen = [false; 6];
        for (name, value) in form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
            let (i, into) = match name.as_ref() {
                "range" => (0, &mut asked.range),
                "start" => (1, &mut asked.start),
                "end" => (2, &mut asked.end),
                "tz" => (3, &mut asked.tz),
                "key" => (4, &mut asked.key),
                "app" => (5, &mut asked.app),
                _ => continue,
            };
            if !seen[i] {
                seen[i] = true;
                *into = value.trim().to_string();
            }
        }
        asked
    }
}

/// A range to show, checked.
pub struct View {
    /// The preset it is (asked for, or whose days the dates are).
    pub preset: Option<Preset>,
    /// The first and last local day, both included.
    pub first: NaiveDate,
    pub last: NaiveDate,
    pub tz: Tz,
    pub key: Option<ApiKeyRecord>,
}

/// The local date of `now` in `tz`.
pub fn today_in(tz: Tz, now: Timestamp) -> NaiveDate {
    DateTime::<Utc>::from_timestamp_millis(now.0)
        .unwrap_or_default()
        .with_timezone(&tz)
        .date_naive()
}

pub fn date(text: &str, which: &str) -> Result<NaiveDate, String> {
    NaiveDate::parse_from_str(text, "%Y-%m-%d").map_err(|_| {
        format!("The {which} date '{text}' is not a date: write it as YYYY-MM-DD, e.g. 2026-11-01.")
    })
}

impl View {
    /// Checks what was asked against the account's keys, at `now`; the error says what is
    /// wrong.
    pub fn check(asked: &Asked, keys: &[ApiKeyRecord], now: Timestamp) -> Result<View, String> {
        let tz = if asked.tz.is_empty() {
            Tz::UTC
        } else {
            parse_timezone(&asked.tz).map_err(|e| format!("Time zone: {e}."))?
        };
        let key = if asked.key.is_empty() {
            None
        } else {
            Some(
                keys.iter()
                    .find(|k| k.key_id.as_str() == asked.key)
                    .cloned()
                    .ok_or_else(|| {
                        format!("No API key of this account has the id '{}'.", asked.key)
                    })?,
            )
        };
        let today = today_in(tz, now);
        let (preset, first, last) = match (asked.start.is_empty(), asked.end.is_empty()) {
            (true, true) => {
                let preset = if asked.range.is_empty() {
                    DEFAULT_PRESET
                } else {
                    Preset::parse(&asked.range).ok_or_else(|| {
                        format!(
                            "Unknown range '{}': pick one of {}, or give a start and an end date.",
                            asked.range,
                            Preset::ALL.map(Preset::slug).join(", ")
                        )
                    })?
                };
                let (first, last) = preset.days(today);
                (Some(preset), first, last)
            }
            (false, false) => {
                let first = date(&asked.start, "start")?;
                let last = date(&asked.end, "end")?;
                let preset = Preset::ALL
                    .into_iter()
                    .find(|p| p.days(today) == (first, last));
                (preset, first, last)
            }
            (true, false) => return Err("Give a start date as well as the end date.".into()),
            (false, true) => return Err("Give an end date as well as the start date.".into()),
        };
        if last < first {
            return Err(format!(
                "The end date {last} is before the start date {first}: the end must be on or \
                 after the start."
            ));
        }
        let days = (last - first).num_days() + 1;
        if days > MAX_DAYS {
            return Err(format!(
                "The range from {first} to {last} is {days} days long: the page shows at most \
                 {MAX_DAYS} days at a time. Pick a shorter range."
            ));
        }
        let view = View {
            preset,
            first,
            last,
            tz,
            key,
        };
        // Dates outside the years the reads take are refused by the range's own rules.
        tollgate_query::timeframe::resolve(&view.spec()?, now).map_err(|e| {
            let mut m = e.message.chars();
            let first = m.next().map(|c| c.to_uppercase().collect::<String>());
            format!("{}{}.", first.unwrap_or_default(), m.as_str())
        })?;
        Ok(view)
    }

    pub fn days(&self) -> i64 {
        (self.last - self.first).num_days() + 1
    }

    /// Whole local days, both dates included: by hour for one or two days, else by day.
    pub fn spec(&self) -> Result<RangeSpec, String> {
        let end = self
            .last
            .succ_opt()
            .ok_or_else(|| format!("The end date {} is too far in the future.", self.last))?;
        Ok(RangeSpec {
            start: Some(Moment::Date(self.first)),
            end: Some(Moment::Date(end)),
            tz: self.tz,
            timeframe: Some(if self.days() <= 2 {
                Timeframe::Hour
            } else {
                Timeframe::Day
            }),
            bound_to_timeframe: false,
        })
    }

    /// The query string of this view: its preset, or its dates, and the zone and key.
    pub fn query(&self) -> String {
        let mut q = form_urlencoded::Serializer::new(String::new());
        match self.preset {
            Some(p) => {
                q.append_pair("range", p.slug());
            }
            None => {
                q.append_pair("start", &self.first.to_string());
                q.append_pair("end", &self.last.to_string());
            }
        }
        let key: Vec<(&str, &str)> = self
            .key
            .iter()
            .map(|k| ("key", k.key_id.as_str()))
            .collect();
        keep(&mut q, Some(self.tz), &key);
        q.finish()
    }

    /// What the page shows, in words: "Last 7 days: 2026-11-12 to 2026-11-18".
    pub fn describe(&self) -> String {
        let days = if self.first == self.last {
            self.first.to_string()
        } else {
            format!("{} to {}", self.first, self.last)
        };
        match self.preset {
            Some(p) => format!("{}: {days}", p.label()),
            None => days,
        }
    }
}

/// Appends the zone (unless UTC, the default) and the other parameters kept (`key`, `app`:
/// those given, in order).
pub fn keep(q: &mut form_urlencoded::Serializer<String>, tz: Option<Tz>, kept: &[(&str, &str)]) {
    if let Some(tz) = tz.filter(|tz| *tz != Tz::UTC) {
        q.append_pair("tz", tz.name());
    }
    for (name, value) in kept {
        q.append_pair(name, value);
    }
}

/// A key as the filter lists it: its alias, the start of its id, and whether it is an admin
/// key or revoked.
pub fn key_label(k: &ApiKeyRecord) -> String {
    let alias = if k.alias.is_empty() {
        "API Key"
    } else {
        &k.alias
    };
    let id = k.key_id.as_str();
    let mut label = format!("{alias} · {}", id.get(..8).unwrap_or(id));
    if k.scope == Scope::Admin {
        label.push_str(" (admin)");
    }
    if k.revoked_at.is_some() {
        label.push_str(" (revoked)");
    }
    label
}

/// Where a page's range controls send the visitor, and what else they carry.
pub struct Controls<'a> {
    /// The page's path (`/dashboard/usage`).
    pub path: &'a str,
    /// The page's name, the prefix of the controls' ids (`usage`: `#usage-filters`,
    /// `#usage-error`).
    pub name: &'a str,
    /// The form's accessible name ("Usage range").
    pub label: &'a str,
    /// The account's keys, for the key filter (the usage page); `None`: no key filter.
    pub keys: Option<&'a [ApiKeyRecord]>,
    /// Other parameters the presets and the form keep (`app`), with their values.
    pub kept: Vec<(&'a str, String)>,
}

/// The range controls: the presets as links (keeping the zone, the key and `kept`), the form
/// of dates, zone (and key) with the view's values or, when it could not be shown, what was
/// typed, and what is wrong with the request when something is.
pub fn controls(c: &Controls, asked: &Asked, view: Option<&View>, error: Option<&str>) -> Markup {
    // Preset links keep the zone and key in force (only valid ones: a link never repeats an
    // error).
    let keys = c.keys.unwrap_or_default();
    let tz = match view {
        Some(v) => Some(v.tz),
        None => parse_timezone(&asked.tz).ok(),
    };
    let key = match view {
        Some(v) => v.key.as_ref().map(|k| k.key_id.as_str().to_string()),
        None => keys
            .iter()
            .find(|k| k.key_id.as_str() == asked.key)
            .map(|k| k.key_id.as_str().to_string()),
    };
    let mut kept: Vec<(&str, &str)> = key.iter().map(|k| ("key", k.as_str())).collect();
    kept.extend(c.kept.iter().map(|(n, v)| (*n, v.as_str())));
    let preset_href = |p: Preset| {
        let mut q = form_urlencoded::Serializer::new(String::new());
        q.append_pair("range", p.slug());
        keep(&mut q, tz, &kept);
        format!("{}?{}", c.path, q.finish())
    };
    // The form shows the view's values, or what was typed when it could not be shown.
    let (start, end, tz_text, key_value) = match view {
        Some(v) => (
            v.first.to_string(),
            v.last.to_string(),
            v.tz.name().to_string(),
            v.key
                .as_ref()
                .map(|k| k.key_id.as_str().to_string())
                .unwrap_or_default(),
        ),
        None => (
            asked.start.clone(),
            asked.end.clone(),
            if asked.tz.is_empty() {
                "UTC".to_string()
            } else {
                asked.tz.clone()
            },
            asked.key.clone(),
        ),
    };
    let mut zones: Vec<&str> = COMMON_ZONES.to_vec();
    if !zones.contains(&tz_text.as_str()) {
        zones.insert(0, &tz_text);
    }
    html! {
        nav aria-label="Ranges" {
            ul.presets {
                @for p in Preset::ALL {
                    li {
                        a href=(preset_href(p))
                            aria-current=[view.and_then(|v| v.preset).filter(|c| *c == p).map(|_| "true")] {
                            (p.label())
                        }
                    }
                }
            }
        }
        form.filters id={ (c.name) "-filters" } method="get" action=(c.path) aria-label=(c.label) {
            div {
                label for="start" { "From" }
                input #start type="date" name="start" value=(start) required;
            }
            div {
                label for="end" { "To (included)" }
                input #end type="date" name="end" value=(end) required;
            }
            div {
                label for="tz" { "Time zone" }
                input #tz type="text" name="tz" value=(tz_text) list="tz-list" autocomplete="off"
                    spellcheck="false" aria-describedby="tz-hint";
                datalist #tz-list {
                    @for z in &zones { option value=(z) {} }
                }
            }
            @if let Some(keys) = c.keys {
                div {
                    label for="key" { "API key" }
                    select #key name="key" {
                        option value="" selected[key_value.is_empty()] { "All keys" }
                        @for k in keys {
                            option value=(k.key_id.as_str()) selected[k.key_id.as_str() == key_value] {
                                (key_label(k))
                            }
                        }
                    }
                }
            }
            @for (name, value) in &c.kept {
                input type="hidden" name=(name) value=(value);
            }
            button.primary type="submit" { "Show" }
        }
        p.hint #tz-hint {
            "Days run from midnight to midnight in the time zone (an IANA name such as "
            code { "Europe/Berlin" } "); both dates are included."
        }
        @if let Some(why) = error {
            p.notice.error id={ (c.name) "-error" } role="alert" { (why) }
        }
    }
}

/// "Showing Last 7 days: 2026-11-12 to 2026-11-18 in UTC": what a page shows, followed by
/// `more` (the key, on the usage page).
pub fn shown(v: &View, more: Markup) -> Markup {
    html! {
        p.lead #range-shown {
            "Showing " strong { (v.describe()) } " in " strong { (v.tz.name()) }
            (more)
            "."
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(text: &str) -> NaiveDate {
        NaiveDate::parse_from_str(text, "%Y-%m-%d").expect("a test date")
    }

    #[test]
    fn presets_are_whole_local_days_ending_today() {
        let days = |p: Preset, today: &str| {
            let (a, b) = p.days(d(today));
            (a.to_string(), b.to_string())
        };
        let s = |a: &str, b: &str| (a.to_string(), b.to_string());
        assert_eq!(
            days(Preset::Today, "2026-11-24"),
            s("2026-11-24", "2026-11-24")
        );
        assert_eq!(
            days(Preset::Last7Days, "2026-03-03"),
            s("2026-02-25", "2026-03-03")
        );
        assert_eq!(
            days(Preset::ThisMonth, "2026-11-01"),
            s("2026-11-01", "2026-11-01")
        );
        assert_eq!(
            days(Preset::LastMonth, "2026-01-15"),
            s("2025-12-01", "2025-12-31")
        );
        assert_eq!(
            days(Preset::LastMonth, "2024-03-31"),
            s("2024-02-01", "2024-02-29")
        );
        for p in Preset::ALL {
            assert_eq!(Preset::parse(p.slug()), Some(p));
        }
    }

    #[test]
    fn a_view_is_checked_and_says_what_is_wrong() {
        let now = Timestamp(1_795_514_400_000); // 2026-11-24T10:00Z
        let asked = |q: &str| Asked::parse(Some(q));
        let v = View::check(
            &asked("start=2026-11-01&end=2026-11-02&tz=Asia/Tokyo"),
            &[],
            now,
        )
        .expect("a view");
        assert_eq!((v.days(), v.tz.name()), (2, "Asia/Tokyo"));
        assert_eq!(v.spec().expect("a spec").timeframe, Some(Timeframe::Hour));
        let v = View::check(&asked("range=7d"), &[], now).expect("a view");
        assert_eq!(v.spec().expect("a spec").timeframe, Some(Timeframe::Day));
        assert_eq!(v.query(), "range=7d");
        // The first of each parameter counts; empty ones are absent.
        let v =
            View::check(&asked("start=&end=&range=today&range=7d&tz="), &[], now).expect("a view");
        assert_eq!((v.preset, v.tz), (Some(Preset::Today), Tz::UTC));
        let err = |q: &str| View::check(&asked(q), &[], now).err().expect("refused");
        assert!(err("start=2026-11-02&end=2026-11-01").contains("before the start date"));
        assert!(err("start=2025-11-23&end=2026-11-24").contains("367 days long"));
        assert!(View::check(&asked("start=2025-11-24&end=2026-11-24"), &[], now).is_ok());
        assert!(err("tz=Nowhere/Land").contains("unknown timezone 'Nowhere/Land'"));
        assert!(err("key=abc").contains("No API key of this account"));
    }
}
