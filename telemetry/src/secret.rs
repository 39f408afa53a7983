//! Keeping credentials out of logs.
//!
//! Every credential value the process uses is registered here ([`register`]; dataset
//! options through `shoal_ufs`). The process's log writer ([`RedactingStderr`],
//! installed by [`crate::init_tracing`]) replaces any registered value with `***` in
//! every formatted event before it is written, whatever crate emitted it and at any
//! level: opendal's and reqsign's `log` records arrive through the `tracing-log`
//! bridge, and reqsign prints its static credential provider with `{:?}` (key and
//! secret in clear) at debug level.
//!
//! The registry only grows (one entry per distinct credential value the process has
//! used), so a value is still scrubbed after its dataset is deleted.

use std::io::{self, Write};
use std::sync::{OnceLock, RwLock};

/// Values shorter than this are not treated as secrets (they would scrub ordinary text).
const MIN_SECRET_LEN: usize = 4;

fn registry() -> &'static RwLock<Vec<String>> {
    static SECRETS: OnceLock<RwLock<Vec<String>>> = OnceLock::new();
    SECRETS.get_or_init(|| RwLock::new(Vec::new()))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registered_values_are_scrubbed() {
        register("unit-test-secret-q8v2");
        let line = "signing with unit-test-secret-q8v2 in us-east-1";
        assert_eq!(redact_known(line), "signing with *** in us-east-1");
        // Short values are not secrets worth scrubbing ordinary text for.
        register("ab");
        assert_eq!(redact_known("abc"), "abc");
    }
}
