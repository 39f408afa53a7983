//! Starting `moto_server` and turning its credential checks on: where the executable
//! is, which port it bound, when it answers, and the IAM user whose key every later
//! request must be signed with.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use shoal_common::{Error, Result};

use crate::process::{TestProcess, find_on_path, is_executable};

/// Environment variable naming the `moto_server` executable to use.
pub const MOTO_SERVER_ENV: &str = "SHOAL_MOTO_SERVER";

/// moto checks credentials only after this many requests; the bootstrap below makes
/// exactly this many (CreateUser, PutUserPolicy, CreateAccessKey). `/moto-api/`
/// readiness polls do not count.
const NO_AUTH_ACTIONS: u32 = 3;
const IAM_USER: &str = "shoal-test";

/// Finds `moto_server`: `$SHOAL_MOTO_SERVER`, then `<workspace>/.venv/bin/moto_server`,
/// then `PATH`.
pub(crate) fn locate(explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = explicit {
        return if is_executable(p) {
            Ok(p.to_owned())
        } else {
            Err(Error::unavailable(format!(
                "moto_server `{}` is not an executable file; {}",
                p.display(),
                install_hint()
            )))
        };
    }
    if let Some(p) = std::env::var_os(MOTO_SERVER_ENV) {
        let p = PathBuf::from(p);
        return if is_executable(&p) {
            Ok(p)
        } else {
            let relative = if p.is_relative() {
                " (a relative path is resolved from the test's working directory, the \
                 crate's own directory: use an absolute path)"
            } else {
                ""
            };
            Err(Error::unavailable(format!(
                "${MOTO_SERVER_ENV} is `{}`, which is not an executable file{relative}; point \
                 it at a venv's bin/moto_server or unset it ({})",
                p.display(),
                install_hint()
            )))
        };
    }
    let venv = workspace_root().join(".venv/bin/moto_server");
    if is_executable(&venv) {
        return Ok(venv);
    }
    find_on_path("moto_server").ok_or_else(|| {
        Error::unavailable(format!(
            "moto_server not found (looked at ${MOTO_SERVER_ENV}, {}, and $PATH); the S3 \
             tests need a real S3 endpoint: {}",
            venv.display(),
            install_hint()
        ))
    })
}

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn install_hint() -> String {
    let root = workspace_root();
    format!(
        "run `{}/scripts/test` once (it creates .venv), or `cd {} && python3 -m venv .venv && \
         .venv/bin/pip install 'moto[server]'`",
        root.display(),
        root.display()
    )
}

/// Runs moto's server with its signature check corrected to canonicalise the query
/// string the way AWS does; see the script's header.
const LAUNCHER: &str = include_str!("moto_launch.py");

/// The Python interpreter (and its arguments) from `moto_server`'s `#!` line: the
/// launcher must run in the same environment to import moto.
fn interpreter(moto_server: &Path) -> Result<(PathBuf, Vec<String>)> {
    let text = std::fs::read(moto_server)
        .map_err(|e| Error::io(format!("read {}", moto_server.display()), e))?;
    let first = text.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(first);
    let mut words = line
        .strip_prefix("#!")
        .map(|l| l.split_whitespace())
        .into_iter()
        .flatten();
    match words.next() {
        Some(python) => Ok((PathBuf::from(python), words.map(str::to_owned).collect())),
        None => Err(Error::unavailable(format!(
            "{} is not a Python console script (no #! line), so its interpreter is \
             unknown; point ${MOTO_SERVER_ENV} at a venv's bin/moto_server ({})",
            moto_server.display(),
            install_hint()
        ))),
    }
}

/// A moto process that answers on `port`, before any IAM setup.
pub(crate) struct Started {
    pub process: TestProcess,
    pub port: u16,
}

/// Starts `moto_server -H 127.0.0.1 -p 0` (the kernel picks a free port, so two
/// fixtures never race for one) and waits until it answers `GET /moto-api/`.
pub(crate) async fn start(
    http: &reqwest::Client,
    moto_server: Option<&Path>,
    deadline: Instant,
) -> Result<Started> {
    let exe = locate(moto_server)?;
    let (python, python_args) = interpreter(&exe)?;
    let mut cmd = Command::new(&python);
    cmd.args(python_args)
        .args(["-c", LAUNCHER, "-H", "127.0.0.1", "-p", "0"])
        .env("INITIAL_NO_AUTH_ACTION_COUNT", NO_AUTH_ACTIONS.to_string())
        .env("PYTHONUNBUFFERED", "1");
    let mut process = TestProcess::spawn("moto_server", cmd)?;
    process.may_log_secrets();
    let port = poll(
        &mut process,
        deadline,
        "moto_server to report its port",
        |p| parse_port(&p.log_contents()),
    )
    .await?;
    let url = format!("http://127.0.0.1:{port}/moto-api/");
    let mut pause = Duration::from_millis(5);
    loop {
        match http.get(&url).send().await {
            Ok(r) if r.status().is_success() => break,
            Ok(r) => {
                return Err(failure(
                    &mut process,
                    &format!("GET {url} answered {}", r.status()),
                ));
            }
            Err(e) if Instant::now() >= deadline => {
                return Err(failure(
                    &mut process,
                    &format!("no answer from {url} before the deadline: {e}"),
                ));
            }
            Err(_) => {}
        }
        if !process.is_running() {
            return Err(failure(&mut process, "moto_server exited"));
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(100));
    }
    Ok(Started { process, port })
}

async fn poll<T>(
    process: &mut TestProcess,
    deadline: Instant,
    what: &str,
    mut check: impl FnMut(&TestProcess) -> Option<T>,
) -> Result<T> {
    let mut pause = Duration::from_millis(5);
    loop {
        if let Some(v) = check(process) {
            return Ok(v);
        }
        if !process.is_running() {
            return Err(failure(
                process,
                &format!("moto_server exited while waiting for {what}"),
            ));
        }
        if Instant::now() >= deadline {
            return Err(failure(process, &format!("timed out waiting for {what}")));
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// An error that carries what the process said, so a failure explains itself.
pub(crate) fn failure(process: &mut TestProcess, what: &str) -> Error {
    let status = match process.try_exit_status() {
        Some(s) => format!(" ({s})"),
        None => String::new(),
    };
    Error::unavailable(format!(
        "S3 fixture: {what}{status}; moto_server log ({}):\n{}",
        process.log_path().display(),
        process.log_tail(4096)
    ))
}

/// Werkzeug prints ` * Running on http://127.0.0.1:PORT` once it has bound.
fn parse_port(log: &str) -> Option<u16> {
    const MARK: &str = "Running on http://127.0.0.1:";
    let rest = &log[log.find(MARK)? + MARK.len()..];
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok().filter(|p| *p != 0)
}

/// An access key that moto enforces from now on.
pub(crate) struct AccessKey {
    pub access_key_id: String,
    pub secret_access_key: String,
}

/// Creates an IAM user allowed everything and an access key for it, using up the
/// unauthenticated actions. moto routes an unsigned-but-scoped request to IAM by the
/// service in its credential scope; the signature is not checked yet.
pub(crate) async fn bootstrap_iam(http: &reqwest::Client, port: u16) -> Result<AccessKey> {
    let policy =
        r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"*","Resource":"*"}]}"#;
    let calls: [&[(&str, &str)]; 3] = [
        &[("Action", "CreateUser"), ("UserName", IAM_USER)],
        &[
            ("Action", "PutUserPolicy"),
            ("UserName", IAM_USER),
            ("PolicyName", "allow-all"),
            ("PolicyDocument", policy),
        ],
        &[("Action", "CreateAccessKey"), ("UserName", IAM_USER)],
    ];
    let mut last = String::new();
    for params in calls {
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(params.iter().copied())
            .append_pair("Version", "2010-05-08")
            .finish();
        let action = params[0].1;
        let resp = http
            .post(format!("http://127.0.0.1:{port}/"))
            .header("content-type", "application/x-www-form-urlencoded")
            .header(
                "authorization",
                "AWS4-HMAC-SHA256 Credential=bootstrap/20240101/us-east-1/iam/aws4_request, \
                 SignedHeaders=host, Signature=0",
            )
            .body(body)
            .send()
            .await
            .map_err(|e| Error::unavailable(format!("IAM {action}: {e}")))?;
        let status = resp.status();
        let text = resp
            .text()
            .await
            .map_err(|e| Error::unavailable(format!("IAM {action}: read response: {e}")))?;
        if !status.is_success() {
            return Err(Error::unavailable(format!(
                "IAM {action} answered {status}: {text}"
            )));
        }
        last = text;
    }
    let field = |tag: &str| {
        xml_value(&last, tag).ok_or_else(|| {
            Error::unavailable(format!("IAM CreateAccessKey: no <{tag}> in answer: {last}"))
        })
    };
    Ok(AccessKey {
        access_key_id: field("AccessKeyId")?,
        secret_access_key: field("SecretAccessKey")?,
    })
}

/// The text of the first `<tag>…</tag>` in `xml`.
pub(crate) fn xml_value(xml: &str, tag: &str) -> Option<String> {
    let open = format!("<{tag}>");
    let start = xml.find(&open)? + open.len();
    let end = xml[start..].find(&format!("</{tag}>"))?;
    Some(
        xml[start..start + end]
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&quot;", "\"")
            .replace("&apos;", "'")
            .replace("&amp;", "&"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_interpreter_of_a_console_script() {
        let dir = crate::temp_dir("shebang");
        let venv = dir.path().join("moto_server");
        std::fs::write(&venv, "#!/venv/bin/python3\nimport sys\n").unwrap();
        assert_eq!(
            interpreter(&venv).unwrap(),
            (PathBuf::from("/venv/bin/python3"), vec![])
        );
        std::fs::write(&venv, "#!/usr/bin/env python3\n").unwrap();
        assert_eq!(
            interpreter(&venv).unwrap(),
            (PathBuf::from("/usr/bin/env"), vec!["python3".to_owned()])
        );
        std::fs::write(&venv, "\x7fELF").unwrap();
        assert!(interpreter(&venv).is_err());
    }

    #[test]
    fn parses_werkzeug_banner() {
        let log = "WARNING: dev server\n * Running on http://127.0.0.1:39923\nPress CTRL+C";
        assert_eq!(parse_port(log), Some(39923));
        assert_eq!(parse_port(" * Running on http://127.0.0.1:"), None);
        assert_eq!(parse_port("nothing yet"), None);
    }

    #[test]
    fn extracts_xml_values() {
        let x = "<A><AccessKeyId>AKIA1</AccessKeyId><SecretAccessKey>s/k+1</SecretAccessKey></A>";
        assert_eq!(xml_value(x, "AccessKeyId").as_deref(), Some("AKIA1"));
        assert_eq!(xml_value(x, "SecretAccessKey").as_deref(), Some("s/k+1"));
        assert_eq!(xml_value(x, "Nope"), None);
        assert_eq!(
            xml_value("<K>a&amp;b&lt;</K>", "K").as_deref(),
            Some("a&b<")
        );
    }
}
