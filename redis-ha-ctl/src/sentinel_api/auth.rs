//! Who may run what on the API, with Redis's rules and replies: once a password is configured
//! (`requirepass`, `[[controller.users]]`), a client that has not authenticated may only run
//! the commands Redis flags `no-auth` (`AUTH`, `HELLO`, `QUIT`, `RESET`), or also the queries
//! when `allow_unauthenticated_reads` says so, and gets `-NOAUTH` for anything else; a
//! read-only user gets `-NOPERM` for a failover.

use hmac::{Hmac, Mac as _};
use sha2::Sha256;

use super::command::{Command, RedisHaCommand, SentinelCommand};
use crate::{
    config::{ApiAccess, ApiAuthConfig, DEFAULT_USER},
    resp::Reply,
};

/// What a command needs.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Need {
    /// Runs before `AUTH` (Redis's `no-auth` commands).
    Nothing,
    /// Only reads the snapshot or the events.
    Read,
    /// Changes what the controllers do (a failover): `ApiAccess::All`.
    Write(&'static str),
}

impl Need {
    pub(super) fn of(command: &Command) -> Self {
        match command {
            Command::Auth { .. } | Command::Hello { .. } | Command::Quit | Command::Reset => {
                Self::Nothing
            }
            Command::Sentinel(SentinelCommand::Failover { .. }) => Self::Write("sentinel|failover"),
            Command::RedisHa(RedisHaCommand::Failover { .. }) => Self::Write("redis-ha|failover"),
            _ => Self::Read,
        }
    }
}

/// The user a connection authenticated as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct User {
    pub name: String,
    pub access: ApiAccess,
}

pub(super) fn noauth() -> Reply {
    Reply::Error("NOAUTH Authentication required.".into())
}

fn wrongpass() -> Reply {
    Reply::Error("WRONGPASS invalid username-password pair or user is disabled.".into())
}

/// Whether a client authenticated as `user` (if at all) may run a command that needs `need`.
pub(super) fn check(config: &ApiAuthConfig, user: Option<&User>, need: &Need) -> Result<(), Reply> {
    if !config.required() {
        return Ok(());
    }
    match (need, user) {
        (Need::Nothing, _) => Ok(()),
        (Need::Read, None) if config.allow_unauthenticated_reads => Ok(()),
        (_, None) => Err(noauth()),
        (Need::Read, Some(_)) => Ok(()),
        (
            Need::Write(_),
            Some(User {
                access: ApiAccess::All,
                ..
            }),
        ) => Ok(()),
        (Need::Write(command), Some(User { name, .. })) => Err(Reply::Error(format!(
            "NOPERM User {name} has no permissions to run the '{command}' command"
        ))),
    }
}

/// `AUTH [user] password`: the user it authenticates as, or the error reply.
pub(super) fn authenticate(
    config: &ApiAuthConfig,
    user: Option<&str>,
    password: &[u8],
) -> Result<User, Reply> {
    if !config.required() {
        // Redis's default user without a password: `AUTH default <anything>` succeeds, a bare
        // `AUTH <password>` is a mistake worth telling.
        return match user {
            None => Err(Reply::err(
                "AUTH <password> called without any password configured for the default user. \
                 Are you sure your configuration is correct?",
            )),
            Some(DEFAULT_USER) => Ok(User {
                name: DEFAULT_USER.into(),
                access: ApiAccess::All,
            }),
            Some(_) => Err(wrongpass()),
        };
    }
    let found = config.user(user);
    // An unknown user costs the same comparison as a known one, so timing does not tell
    // which users exist.
    let expected = found.map_or(&b"\0no such user\0"[..], |(p, _)| p.as_bytes());
    let matches = same_secret(expected, password);
    match found {
        Some((_, access)) if matches => Ok(User {
            name: user.unwrap_or(DEFAULT_USER).to_owned(),
            access,
        }),
        _ => Err(wrongpass()),
    }
}

/// Compares two secrets in time independent of where they differ, and of their lengths: each
/// becomes an HMAC tag under a fixed message, and the tags are compared by `verify_slice`,
/// which is constant-time (Redis hashes both sides for the same reason).
fn same_secret(expected: &[u8], given: &[u8]) -> bool {
    let tag = |key: &[u8]| {
        let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
        mac.update(b"redis-ha API password");
        mac
    };
    let given_tag = tag(given).finalize().into_bytes();
    tag(expected).verify_slice(&given_tag).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ApiUser;

    fn config(requirepass: Option<&str>, open_reads: bool) -> ApiAuthConfig {
        ApiAuthConfig {
            requirepass: requirepass.map(Into::into),
            requirepass_file: None,
            users: vec![ApiUser {
                name: "monitor".into(),
                password: "watch-only".into(),
                password_file: None,
                access: ApiAccess::ReadOnly,
            }],
            allow_unauthenticated_reads: open_reads,
        }
    }

    #[test]
    fn secrets_compare_equal_only_when_equal() {
        assert!(same_secret(b"s3cret", b"s3cret"));
        assert!(!same_secret(b"s3cret", b"s3cres"));
        assert!(!same_secret(b"s3cret", b"s3cret\n"));
        assert!(!same_secret(b"s3cret", b""));
    }

    #[test]
    fn auth_finds_the_user_and_its_access() {
        let c = config(Some("admin-pass"), false);
        let ok = |user, pass: &str| authenticate(&c, user, pass.as_bytes());
        assert_eq!(ok(None, "admin-pass").unwrap().access, ApiAccess::All);
        assert_eq!(
            ok(Some("default"), "admin-pass").unwrap().access,
            ApiAccess::All
        );
        let monitor = ok(Some("monitor"), "watch-only").unwrap();
        assert_eq!(
            (monitor.name.as_str(), monitor.access),
            ("monitor", ApiAccess::ReadOnly)
        );
        for (user, pass) in [
            (None, "watch-only"),
            (Some("monitor"), "admin-pass"),
            (Some("nobody"), "admin-pass"),
            (None, ""),
        ] {
            assert_eq!(ok(user, pass), Err(wrongpass()), "{user:?} {pass:?}");
        }
        // Users only: the default user is disabled.
        let users_only = config(None, false);
        assert_eq!(
            authenticate(&users_only, None, b"watch-only"),
            Err(wrongpass())
        );
    }

    #[test]
    fn without_a_password_everything_is_open_and_auth_says_so() {
        let open = ApiAuthConfig::default();
        assert_eq!(
            check(&open, None, &Need::Write("sentinel|failover")),
            Ok(())
        );
        assert!(
            matches!(authenticate(&open, None, b"x"), Err(Reply::Error(e)) if e.contains("without any password"))
        );
        assert!(authenticate(&open, Some("default"), b"x").is_ok());
    }

    #[test]
    fn commands_need_what_redis_asks() {
        let c = config(Some("admin-pass"), false);
        let admin = User {
            name: "default".into(),
            access: ApiAccess::All,
        };
        let monitor = User {
            name: "monitor".into(),
            access: ApiAccess::ReadOnly,
        };
        let failover = Need::Write("sentinel|failover");
        assert_eq!(check(&c, None, &Need::Nothing), Ok(()));
        assert_eq!(check(&c, None, &Need::Read), Err(noauth()));
        assert_eq!(check(&c, None, &failover), Err(noauth()));
        assert_eq!(check(&c, Some(&monitor), &Need::Read), Ok(()));
        assert_eq!(
            check(&c, Some(&monitor), &failover),
            Err(Reply::Error(
                "NOPERM User monitor has no permissions to run the 'sentinel|failover' command"
                    .into()
            ))
        );
        assert_eq!(check(&c, Some(&admin), &failover), Ok(()));
        // Open reads open the queries, never a failover.
        let open_reads = config(Some("admin-pass"), true);
        assert_eq!(check(&open_reads, None, &Need::Read), Ok(()));
        assert_eq!(check(&open_reads, None, &failover), Err(noauth()));
    }
}
