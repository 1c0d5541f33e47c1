//! Where the interactive client keeps its device token: one file per server, readable by the user
//! only.
//!
//! The file is `$XDG_CONFIG_HOME/chatd/tokens/<server>` (or `~/.config/chatd/tokens/<server>` when
//! `XDG_CONFIG_HOME` is not set), where `<server>` is the address given to `--connect` with every
//! character other than letters, digits, `.`, `-` and `_` replaced by `_`. The directories are
//! created with mode 0700 and the file with mode 0600; it is written to a temporary file beside it
//! and renamed, so a crash leaves the old token or the new one, never half of one. A token file that
//! others can read is used but reported, as ssh does with keys.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The file of the token for `addr`, or `None` when neither `XDG_CONFIG_HOME` nor `HOME` is set.
pub fn path_for(addr: &str) -> Option<PathBuf> {
    let base = match std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(std::env::var_os("HOME").filter(|v| !v.is_empty())?).join(".config"),
    };
    let server: String = addr
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect();
    Some(base.join("chatd").join("tokens").join(server))
}

/// What was read: the token, and a warning for the user if the file is readable by others.
pub fn load(path: &Path) -> io::Result<(Option<String>, Option<String>)> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((None, None)),
        Err(e) => return Err(e),
    };
    let mode = fs::metadata(path)?.permissions().mode();
    let warning = (mode & 0o077 != 0).then(|| {
        format!(
            "{} can be read by other users (mode {:o}); it holds a login",
            path.display(),
            mode & 0o777
        )
    });
    let token = text.trim().to_owned();
    Ok(((!token.is_empty()).then_some(token), warning))
}

/// Writes the token, readable by the user only.
pub fn save(path: &Path, token: &str) -> io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::other("a token file needs a directory"))?;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("token")
    ));
    let _ = fs::remove_file(&tmp);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(token.as_bytes())?;
    file.write_all(b"\n")?;
    file.sync_all()?;
    fs::rename(&tmp, path)
}

/// Deletes the token file; a missing one is no error.
pub fn forget(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saved_only_for_the_user_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir
            .path()
            .join("chatd")
            .join("tokens")
            .join("127.0.0.1_7878");
        assert_eq!(load(&path).unwrap(), (None, None));
        save(&path, "ct1.secret").unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let dir_mode = fs::metadata(path.parent().unwrap())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(dir_mode & 0o777, 0o700);
        assert_eq!(load(&path).unwrap(), (Some("ct1.secret".into()), None));
        // Saving again replaces it.
        save(&path, "ct1.other").unwrap();
        assert_eq!(load(&path).unwrap().0.as_deref(), Some("ct1.other"));
        // A file others can read is still used, with a warning.
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let (token, warning) = load(&path).unwrap();
        assert_eq!(token.as_deref(), Some("ct1.other"));
        assert!(warning.unwrap().contains("644"));
        forget(&path).unwrap();
        forget(&path).unwrap();
        assert_eq!(load(&path).unwrap(), (None, None));
    }

    #[test]
    fn the_path_follows_the_config_directory_and_the_server() {
        // Read from the environment, so only the naming of the file is checked here.
        let p = path_for("chat.example.org:7878");
        if let Some(p) = p {
            assert!(p.ends_with("chatd/tokens/chat.example.org_7878"), "{p:?}");
        }
    }
}
