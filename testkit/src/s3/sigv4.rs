//! AWS Signature Version 4 for the few raw S3 requests the fixture makes itself
//! (creating buckets, letting tests inspect raw responses). Everything else goes
//! through opendal, which signs on its own.

use std::time::{SystemTime, UNIX_EPOCH};

use hmac::{KeyInit, Mac};
use sha2::{Digest, Sha256};

type HmacSha256 = hmac::Hmac<Sha256>;

pub(crate) struct SigningKey<'a> {
    pub access_key_id: &'a str,
    pub secret_access_key: &'a str,
    pub region: &'a str,
    pub service: &'a str,
}

/// A request ready to send: the URL to use (built from the same encoded path and query
/// that were signed) and the headers to add.
pub(crate) struct Signed {
    pub url: String,
    pub headers: Vec<(&'static str, String)>,
}

/// Signs `method endpoint+path?query` with `payload` as the body. `endpoint` is
/// `http://host:port`; `path` starts with `/` and is not yet percent-encoded.
pub(crate) fn sign(
    key: &SigningKey<'_>,
    method: &str,
    endpoint: &str,
    path: &str,
    query: &[(&str, &str)],
    payload: &[u8],
    now: SystemTime,
) -> Signed {
    let host = endpoint
        .split_once("://")
        .map(|(_, h)| h)
        .unwrap_or(endpoint)
        .trim_end_matches('/');
    let (date, amz_date) = timestamp(now);
    let payload_hash = hex::encode(Sha256::digest(payload));
    let canonical_uri = encode(path, false);
    let mut pairs: Vec<(String, String)> = query
        .iter()
        .map(|(k, v)| (encode(k, true), encode(v, true)))
        .collect();
    pairs.sort();
    let canonical_query = pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    let signed_headers = "host;x-amz-content-sha256;x-amz-date";
    let canonical_request = format!(
        "{method}\n{canonical_uri}\n{canonical_query}\nhost:{host}\nx-amz-content-sha256:{payload_hash}\nx-amz-date:{amz_date}\n\n{signed_headers}\n{payload_hash}"
    );
    let scope = format!("{date}/{}/{}/aws4_request", key.region, key.service);
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        hex::encode(Sha256::digest(canonical_request.as_bytes()))
    );
    let mut k = hmac(
        format!("AWS4{}", key.secret_access_key).as_bytes(),
        date.as_bytes(),
    );
    for part in [key.region, key.service, "aws4_request"] {
        k = hmac(&k, part.as_bytes());
    }
    let signature = hex::encode(hmac(&k, string_to_sign.as_bytes()));
    let authorization = format!(
        "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed_headers}, Signature={signature}",
        key.access_key_id
    );
    let mut url = format!("{}{canonical_uri}", endpoint.trim_end_matches('/'));
    if !canonical_query.is_empty() {
        url.push('?');
        url.push_str(&canonical_query);
    }
    Signed {
        url,
        headers: vec![
            ("authorization", authorization),
            ("x-amz-date", amz_date),
            ("x-amz-content-sha256", payload_hash),
        ],
    }
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    // HMAC takes keys of any length, so `new_from_slice` cannot fail here.
    let mut mac = match HmacSha256::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC accepts keys of any length"),
    };
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

/// RFC 3986 percent-encoding as SigV4 wants it: unreserved characters stay, `/` stays
/// in paths, everything else becomes `%XX`.
fn encode(s: &str, encode_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            b'/' if !encode_slash => out.push('/'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// `(YYYYMMDD, YYYYMMDDTHHMMSSZ)` in UTC.
fn timestamp(now: SystemTime) -> (String, String) {
    let secs = now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    let date = format!("{y:04}{m:02}{d:02}");
    let amz = format!(
        "{date}T{:02}{:02}{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    );
    (date, amz)
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        let t = UNIX_EPOCH + Duration::from_secs(1_440_938_160);
        assert_eq!(
            timestamp(t),
            ("20150830".to_owned(), "20150830T123600Z".to_owned())
        );
    }

    #[test]
    fn encodes_like_sigv4() {
        assert_eq!(encode("/b/a key+x~", false), "/b/a%20key%2Bx~");
        assert_eq!(encode("a/b", true), "a%2Fb");
    }

    /// The GET example of the AWS SigV4 documentation for S3 ("Example: GET Object"),
    /// so a mistake in the canonical form shows up here rather than as a moto error.
    #[test]
    fn matches_the_aws_documented_signature() {
        let key = SigningKey {
            access_key_id: "AKIAIOSFODNN7EXAMPLE",
            secret_access_key: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            region: "us-east-1",
            service: "s3",
        };
        // 20130524T000000Z
        let t = UNIX_EPOCH + Duration::from_secs(1_369_353_600);
        let s = sign(
            &key,
            "GET",
            "http://examplebucket.s3.amazonaws.com",
            "/",
            &[("max-keys", "2"), ("prefix", "J")],
            b"",
            t,
        );
        let auth = &s.headers[0].1;
        assert_eq!(
            auth,
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, \
             SignedHeaders=host;x-amz-content-sha256;x-amz-date, \
             Signature=34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7"
        );
        assert_eq!(
            s.url,
            "http://examplebucket.s3.amazonaws.com/?max-keys=2&prefix=J"
        );
    }
}
