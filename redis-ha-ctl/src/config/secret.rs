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

/// The key of the replica choice (`flow_hash`), from the cluster's shared secret: the first
/// 16 bytes of HMAC-SHA256(secret, label). The label keeps it apart from every other use of
/// the secret (peer messages are MACed with the secret itself), so knowing the one reveals
/// nothing of the other; the same secret gives every LB node the same key.
pub fn flow_hash_key(secret: &str) -> redis_ha_common::FlowHashKey {
    use hmac::{Hmac, Mac as _};
    let mut mac =
        Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(b"redis-ha flow hash key v1");
    let out = mac.finalize().into_bytes();
    let mut key = [0; 16];
    key.copy_from_slice(&out[..16]);
    redis_ha_common::FlowHashKey::from_bytes(key)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn the_flow_hash_key_is_the_same_for_a_secret_and_differs_between_secrets() {
        let a = flow_hash_key("a-secret-of-enough-characters");
        assert_eq!(a, flow_hash_key("a-secret-of-enough-characters"));
        assert_ne!(a, flow_hash_key("another-secret-of-enough-characters"));
        assert_ne!(a, redis_ha_common::FlowHashKey::default());
    }

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
