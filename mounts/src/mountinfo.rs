//! Reading `/proc/self/mountinfo`: what is mounted where, without touching the mount
//! itself (a stat through a dead FUSE mount fails with ENOTCONN, and one through our
//! own mount before its session runs would deadlock).

use std::path::{Path, PathBuf};

/// One line of `/proc/self/mountinfo`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountEntry {
    pub mount_point: PathBuf,
    /// `major:minor` of the mounted filesystem (names its bdi in `/sys/class/bdi`).
    pub dev: String,
    pub fstype: String,
    pub source: String,
}

impl MountEntry {
    pub fn is_fuse(&self) -> bool {
        self.fstype == "fuse" || self.fstype.starts_with("fuse.")
    }

    /// A mount made by `shoal mount` (its source is `shoal`).
    pub fn is_shoal(&self) -> bool {
        self.is_fuse() && self.source == "shoal"
    }
}

/// Every mount visible to this process.
pub fn mounts() -> std::io::Result<Vec<MountEntry>> {
    Ok(parse(&std::fs::read_to_string("/proc/self/mountinfo")?))
}

/// The topmost mount at exactly `path` (already absolute and free of `..`).
pub fn find(path: &Path) -> Option<MountEntry> {
    mounts()
        .ok()?
        .into_iter()
        .rev()
        .find(|m| m.mount_point == path)
}

fn parse(text: &str) -> Vec<MountEntry> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<MountEntry> {
    let (left, right) = line.split_once(" - ")?;
    let mut l = left.split(' ');
    let _id = l.next()?;
    let _parent = l.next()?;
    let dev = l.next()?.to_owned();
    let _root = l.next()?;
    let mount_point = PathBuf::from(unescape(l.next()?));
    let mut r = right.split(' ');
    let fstype = r.next()?.to_owned();
    let source = unescape(r.next()?);
    Some(MountEntry {
        mount_point,
        dev,
        fstype,
        source,
    })
}

/// Undoes the kernel's octal escapes (`\040` for a space, ...).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && let Some(v) = std::str::from_utf8(&b[i + 1..i + 4])
                .ok()
                .and_then(|o| u8::from_str_radix(o, 8).ok())
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_fuse_and_escaped_lines() {
        let text = "22 1 0:21 / /dev/shm rw,relatime shared:2 - tmpfs tmpfs rw\n\
                    90 22 0:55 / /tmp/my\\040mnt rw,nosuid,nodev,relatime - fuse shoal rw,user_id=0\n\
                    bad line\n";
        let m = parse(text);
        assert_eq!(m.len(), 2);
        assert_eq!(m[1].mount_point, PathBuf::from("/tmp/my mnt"));
        assert_eq!(m[1].dev, "0:55");
        assert!(m[1].is_shoal());
        assert!(!m[0].is_fuse());
        assert_eq!(unescape("a\\134b"), "a\\b");
        assert_eq!(unescape("end\\04"), "end\\04");
    }
}
