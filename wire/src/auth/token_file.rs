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

/// Writes a token to `path` with mode 0600 (created that way, never widened).
pub fn write_token_file(path: &std::path::Path, token: &Token) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::io(format!("create token file {}", path.display()), e))?;
    f.write_all(format!("{}\n", token.reveal()).as_bytes())
        .map_err(|e| Error::io(format!("write token file {}", path.display()), e))
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
