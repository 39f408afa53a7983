//! Private token files: read (refusing files others can read or change) and written
//! with mode 0600 from the start.

use shoal_common::auth::Token;
use shoal_common::{Error, Result};

/// Reads a token from a private file. A file that other users can read, or that its
/// group can change, is refused: it would leak or let others swap the credential.
/// Group *read* is allowed because Kubernetes mounts Secret volumes group-readable
/// (0440) for the pod's `fsGroup`, the one way to hand a pod a file it must own.
pub fn read_token_file(path: &std::path::Path) -> Result<Token> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path)
        .map_err(|e| Error::invalid(format!("cannot read token file {}: {e}", path.display())))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o037 != 0 {
        return Err(Error::permission_denied(format!(
            "token file {} is open to other users (mode {mode:o}); run `chmod 600 {}`",
            path.display(),
            path.display()
        )));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::invalid(format!("cannot read token file {}: {e}", path.display())))?;
    Token::parse(&text)
}

/// The token in `path` if it exists (it must be private), else a fresh one written
/// there with mode 0600. Returns the token and whether it was created.
pub fn load_or_create_token_file(path: &std::path::Path) -> Result<(Token, bool)> {
    if path.exists() {
        return read_token_file(path).map(|t| (t, false));
    }
    let t = Token::generate();
    write_token_file(path, &t)?;
    Ok((t, true))
}

/// Writes a token to `path` with mode 0600 (created that way, never widened), durably
/// and all at once: the token is written and synced under a temporary name, then
/// linked into place (which, like `O_EXCL`, fails if `path` exists) and the directory
/// synced. A crash never leaves an empty or partial token file that would stop the
/// next start, and a token already handed out is on disk.
pub fn write_token_file(path: &std::path::Path, token: &Token) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => std::path::Path::new("."),
    };
    std::fs::create_dir_all(dir).map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", Token::generate().id()));
    let written = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(format!("{}\n", token.reveal()).as_bytes())?;
        f.sync_all()
    })();
    let linked = written
        .map_err(|e| Error::io(format!("write token file {}", path.display()), e))
        .and_then(|()| {
            std::fs::hard_link(&tmp, path)
                .map_err(|e| Error::io(format!("create token file {}", path.display()), e))
        });
    let _ = std::fs::remove_file(&tmp);
    linked?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(format!("sync {}", dir.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_files_must_be_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile_dir();
        let p = dir.join("t");
        let t = Token::generate();
        write_token_file(&p, &t).unwrap();
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(read_token_file(&p).unwrap(), t);
        // Never replaces a token already there, and leaves no temporary file behind.
        assert!(write_token_file(&p, &Token::generate()).is_err());
        assert_eq!(read_token_file(&p).unwrap(), t);
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        // A Kubernetes Secret volume with fsGroup: group-readable, nothing for others.
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o440)).unwrap();
        assert_eq!(read_token_file(&p).unwrap(), t);
        for mode in [0o644, 0o604, 0o660, 0o602] {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
            let e = read_token_file(&p).unwrap_err().to_string();
            assert!(e.contains("chmod 600"), "{mode:o}: {e}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("shoal-auth-test-{}", Token::generate().id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
