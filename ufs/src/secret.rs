//! Dataset credentials: registered with the log scrubber (`shoal_telemetry::secret`)
//! before opendal sees them, hidden in `{:?}`, and scrubbed from opendal's own log and
//! retry notices ([`UfsLog`]).

use std::collections::BTreeMap;

use opendal::ErrorKind;
use opendal::layers::{LoggingInterceptor, RetryEvent, RetryInterceptor};
use opendal::raw::{Operation, ServiceInfo};
use shoal_telemetry::secret::{redact_known, register};

use crate::is_secret_option;

/// Registers the secret values among dataset `options` so no log line shows them.
pub fn register_options(options: &BTreeMap<String, String>) {
    for (k, v) in options {
        if is_secret_option(k) {
            register(v);
        }
    }
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
    fn secret_options_are_scrubbed_and_hidden() {
        let mut o = BTreeMap::new();
        o.insert(
            "secret_access_key".to_string(),
            "unit-test-secret-k3p9".to_string(),
        );
        o.insert("region".to_string(), "us-east-1".to_string());
        register_options(&o);
        assert_eq!(
            redact_known("key unit-test-secret-k3p9 in us-east-1"),
            "key *** in us-east-1"
        );
        let shown = format!("{:?}", DebugOptions(&o));
        assert_eq!(
            shown,
            r#"{"region": "us-east-1", "secret_access_key": "<hidden>"}"#
        );
    }
}
