//! The server's log lines: text or JSON (`log_format`), on stderr, filtered by `RUST_LOG`
//! (default `info`). Text is coloured only when stderr is a terminal and `NO_COLOR` is unset, so
//! a file or a log collector never receives escape codes. With JSON every line is one object;
//! the lines the server prints on stdout at start (where it listens, the demo's keys) are
//! objects too ([`startup`]), so a collector can read both streams as JSON lines.

use crate::config::LogFormat;
use serde_json::{json, Map, Value};
use std::io::IsTerminal;
use tracing_subscriber::EnvFilter;

/// Installs the process's log subscriber.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => {
            let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
            builder.with_ansi(ansi).init();
        }
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .init(),
    }
}

/// Prints a startup line on stdout: `text` as it is, or in JSON mode one object with the
/// message and `fields` (shaped like the JSON log lines: `timestamp`, `level`, `message`).
pub fn startup(format: LogFormat, text: &str, message: &str, fields: Value) {
    match format {
        LogFormat::Text => println!("{text}"),
        LogFormat::Json => {
            let mut line = Map::new();
            line.insert(
                "timestamp".into(),
                json!(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)),
            );
            line.insert("level".into(), json!("INFO"));
            line.insert("message".into(), json!(message));
            if let Value::Object(fields) = fields {
                line.extend(fields);
            }
            println!("{}", Value::Object(line));
        }
    }
}

/// Reports the error that ended the server: as a JSON log line in JSON mode (then exits 1),
/// else returned, for `main` to print.
pub fn fatal(format: LogFormat, result: anyhow::Result<()>) -> anyhow::Result<()> {
    match (format, result) {
        (LogFormat::Json, Err(e)) => {
            tracing::error!(error = %format!("{e:#}"), "tollgate serve stopped");
            std::process::exit(1);
        }
        (_, result) => result,
    }
}
