//! How configuration values combine: [`pick`] layers the configuration file and the
//! built-in default under a flag or its `SHOAL_*` environment variable (which clap has
//! already merged). The file's sections are typed and validated by the crates that own
//! them; the `shoal` binary reads the file.

/// flag-or-env (already merged by clap) > file > default.
pub fn pick<T>(flag_or_env: Option<T>, file: Option<T>, default: T) -> T {
    flag_or_env.or(file).unwrap_or(default)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precedence() {
        assert_eq!(pick(Some(1), Some(2), 3), 1);
        assert_eq!(pick(None, Some(2), 3), 2);
        assert_eq!(pick(None::<i32>, None, 3), 3);
    }
}
