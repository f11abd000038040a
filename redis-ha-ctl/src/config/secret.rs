//! Reading a file that holds a secret (`secret_file`): refused when other users may read it
//! or anyone but its owner may change it, as ssh refuses a private key others can read. A
//! secret others can read is no longer a secret; one others can write lets them join the
//! peers or forge their votes.

use std::{fs, os::unix::fs::PermissionsExt as _, path::Path};

/// Permission bits a secret file must not have: any for others, write for the group.
pub(super) const FORBIDDEN: u32 = 0o027;

/// The secret in `path`, trimmed; the error says what is wrong and what to do.
pub(super) fn read(path: &Path) -> Result<String, String> {
    let meta = fs::metadata(path).map_err(|e| format!("cannot read {path:?}: {e}"))?;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & FORBIDDEN != 0 {
        return Err(format!(
            "{path:?} has mode {mode:04o}: other users may read or change the secret; \
             run `chmod 600 {}` (or 640 for a group that must read it)",
            path.display()
        ));
    }
    let text = fs::read_to_string(path).map_err(|e| format!("cannot read {path:?}: {e}"))?;
    Ok(text.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn a_secret_others_may_read_or_the_group_may_change_is_refused() {
        let dir = std::env::temp_dir().join(format!("redis-ha-secret-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let file = dir.join("secret");
        fs::write(&file, "a-secret-of-enough-characters\n").unwrap();
        for (mode, ok) in [
            (0o600, true),
            (0o400, true),
            (0o640, true),
            (0o644, false),
            (0o604, false),
            (0o660, false),
            (0o602, false),
        ] {
            fs::set_permissions(&file, fs::Permissions::from_mode(mode)).unwrap();
            let got = read(&file);
            match (ok, &got) {
                (true, Ok(s)) => assert_eq!(s, "a-secret-of-enough-characters"),
                (false, Err(e)) => assert!(
                    e.contains(&format!("{mode:04o}")) && e.contains("chmod 600"),
                    "{e}"
                ),
                _ => panic!("mode {mode:o}: {got:?}"),
            }
        }
        fs::remove_dir_all(&dir).unwrap();
    }
}
