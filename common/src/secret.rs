//! Keeping dataset credentials out of logs.
//!
//! Every credential value that reaches [`crate::ufs::build_operator`] is registered
//! here ([`register_options`]). The process's log writer ([`RedactingStderr`], installed
//! by [`crate::telemetry::init_tracing`]) replaces any registered value with `***` in
//! every formatted event before it is written, whatever crate emitted it and at any
//! level: opendal's and reqsign's `log` records arrive through the `tracing-log`
//! bridge, and reqsign prints its static credential provider with `{:?}` (key and
//! secret in clear) at debug level. On top of that, opendal's own logging and retry
//! notices go through [`UfsLog`], which scrubs them at the source.
//!
//! The registry only grows (one entry per distinct credential value the process has
//! used), so a value is still scrubbed after its dataset is deleted.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::sync::{OnceLock, RwLock};

use opendal::ErrorKind;
use opendal::layers::{LoggingInterceptor, RetryEvent, RetryInterceptor};
use opendal::raw::{Operation, ServiceInfo};

use crate::ufs::is_secret_option;

/// Values shorter than this are not treated as secrets (they would scrub ordinary text).
const MIN_SECRET_LEN: usize = 4;

fn registry() -> &'static RwLock<Vec<String>> {
    static SECRETS: OnceLock<RwLock<Vec<String>>> = OnceLock::new();
    SECRETS.get_or_init(|| RwLock::new(Vec::new()))
}

/// Registers the secret values among dataset `options` so no log line shows them.
pub fn register_options(options: &BTreeMap<String, String>) {
    for (k, v) in options {
        if is_secret_option(k) {
            register(v);
        }
    }
}

/// Registers one secret value.
pub fn register(value: &str) {
    if value.len() < MIN_SECRET_LEN {
        return;
    }
    let Ok(mut r) = registry().write() else {
        return;
    };
    if !r.iter().any(|s| s == value) {
        r.push(value.to_owned());
        // Longest first, so a secret that contains another is replaced whole.
        r.sort_by_key(|s| std::cmp::Reverse(s.len()));
    }
}

/// `text` with every registered secret replaced by `***`.
pub fn redact_known(text: &str) -> String {
    let Ok(r) = registry().read() else {
        // A poisoned registry: show nothing rather than risk showing a secret.
        return "<log line withheld: secret registry unavailable>".to_owned();
    };
    let mut out = text.to_owned();
    for s in r.iter() {
        if out.contains(s.as_str()) {
            out = out.replace(s.as_str(), "***");
        }
    }
    out
}

/// Dataset options for `{:?}`: secret values are shown as `<hidden>`. Types that hold
/// options implement `Debug` with it instead of deriving it.
pub struct DebugOptions<'a>(pub &'a BTreeMap<String, String>);

impl std::fmt::Debug for DebugOptions<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|(k, v)| {
                let shown = if is_secret_option(k) {
                    "<hidden>"
                } else {
                    v.as_str()
                };
                (k, shown)
            }))
            .finish()
    }
}

/// A `tracing_subscriber` writer to stderr that scrubs registered secrets. The fmt
/// layer writes each event with one `write_all`, so a secret is never split across
/// two writes.
#[derive(Clone, Copy, Debug, Default)]
pub struct RedactingStderr;

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for RedactingStderr {
    type Writer = RedactingStderr;

    fn make_writer(&'a self) -> Self::Writer {
        RedactingStderr
    }
}

impl Write for RedactingStderr {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        io::stderr().write_all(redact_known(&text).as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}

/// opendal's logging and retry notices, sent to `tracing` with secrets scrubbed.
/// Expected errors are warnings and unexpected ones errors, as opendal's default does;
/// NotFound is routine (a stat of a missing object) and stays at debug.
#[derive(Clone, Copy, Debug, Default)]
pub struct UfsLog;

impl LoggingInterceptor for UfsLog {
    fn log(
        &self,
        info: &ServiceInfo,
        operation: Operation,
        context: &[(&str, &str)],
        message: &str,
        err: Option<&opendal::Error>,
    ) {
        let mut ctx = String::new();
        for (k, v) in context {
            ctx.push(' ');
            ctx.push_str(k);
            ctx.push('=');
            ctx.push_str(v);
        }
        let scheme = info.scheme();
        match err {
            Some(e) => {
                let line = redact_known(&format!("{scheme}{ctx}: {operation} {message}: {e}"));
                match e.kind() {
                    ErrorKind::NotFound => tracing::debug!(target: "opendal", "{line}"),
                    ErrorKind::Unexpected => tracing::error!(target: "opendal", "{line}"),
                    _ => tracing::warn!(target: "opendal", "{line}"),
                }
            }
            None => {
                tracing::trace!(target: "opendal", "{}", redact_known(&format!("{scheme}{ctx}: {operation} {message}")))
            }
        }
    }
}

impl RetryInterceptor for UfsLog {
    fn intercept(&self, event: RetryEvent<'_>) {
        tracing::warn!(
            target: "opendal",
            "{}",
            redact_known(&format!(
                "will retry {} (attempt {}) after {:.1}s because: {}",
                event.op,
                event.attempt,
                event.retry_after.as_secs_f64(),
                event.err
            ))
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registered_values_are_scrubbed() {
        let mut o = BTreeMap::new();
        o.insert(
            "secret_access_key".to_string(),
            "unit-test-secret-q8v2".to_string(),
        );
        o.insert("region".to_string(), "us-east-1".to_string());
        register_options(&o);
        let line = "signing with unit-test-secret-q8v2 in us-east-1";
        assert_eq!(redact_known(line), "signing with *** in us-east-1");
        // Short values are not secrets worth scrubbing ordinary text for.
        register("ab");
        assert_eq!(redact_known("abc"), "abc");
        let shown = format!("{:?}", DebugOptions(&o));
        assert_eq!(
            shown,
            r#"{"region": "us-east-1", "secret_access_key": "<hidden>"}"#
        );
    }
}
