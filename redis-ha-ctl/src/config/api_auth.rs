//! Who may use the controller's API (the RESP port at `[controller] listen`), in Sentinel's
//! terms: `requirepass` is the password of the default user (`AUTH <password>`), and
//! `[[controller.users]]` are named users (`AUTH <user> <password>`, `HELLO 2|3 AUTH ...`), each
//! allowed everything or only the queries. Without any password the API is open, as a
//! Sentinel without `requirepass` is: for a trusted network only.
//!
//! The keys live in `[controller]`; their raw form is read in `load`, checked here.

use std::{collections::HashSet, path::PathBuf};

use serde::{Deserialize, Serialize};
use toml::Spanned;

use super::validate::{Problem, SecretFiles, problem, read_secret_file};

/// The name `requirepass` gives its user, as in Redis's ACLs.
pub const DEFAULT_USER: &str = "default";

/// What an authenticated API user may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ApiAccess {
    /// Every command, failovers included.
    All,
    /// The queries (`SENTINEL` lookups, `INFO`, `REDIS-HA STATUS|EVENTS`, subscriptions);
    /// a failover is refused with `-NOPERM`.
    ReadOnly,
}

/// A named API user.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ApiUser {
    pub name: String,
    /// Read from `password_file` when the file names one, so it is always written back inline.
    pub password: String,
    /// Shown by `check-config` instead of the password.
    #[serde(skip)]
    pub password_file: Option<PathBuf>,
    pub access: ApiAccess,
}

/// The API's passwords and users; the keys are `[controller]`'s own (flattened there).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ApiAuthConfig {
    /// The default user's password, allowed everything. Read from `requirepass_file` when the
    /// file names one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requirepass: Option<String>,
    #[serde(skip)]
    pub requirepass_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<ApiUser>,
    /// Let clients that did not AUTH run the queries (never a failover). Off by default:
    /// once a password is set, nothing but `AUTH`, `HELLO`, `QUIT` and `RESET` works before
    /// `AUTH`, as with Redis.
    pub allow_unauthenticated_reads: bool,
}

impl ApiAuthConfig {
    /// Whether any password is set: without one, every client may do everything.
    pub fn required(&self) -> bool {
        self.requirepass.is_some() || !self.users.is_empty()
    }

    /// The password and access of user `name` (`None` for the default user), if it exists.
    pub fn user(&self, name: Option<&str>) -> Option<(&str, ApiAccess)> {
        match name {
            None | Some(DEFAULT_USER) if self.requirepass.is_some() => {
                self.requirepass.as_deref().map(|p| (p, ApiAccess::All))
            }
            _ => {
                let name = name.unwrap_or(DEFAULT_USER);
                self.users
                    .iter()
                    .find(|u| u.name == name)
                    .map(|u| (u.password.as_str(), u.access))
            }
        }
    }
}

/// `[[controller.users]]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawApiUser {
    pub name: Spanned<String>,
    pub password: Option<Spanned<String>>,
    pub password_file: Option<Spanned<String>>,
    pub access: ApiAccess,
}

/// The raw API keys of `[controller]`, borrowed from its section.
pub(super) struct RawApiAuth<'a> {
    pub section: &'a std::ops::Range<usize>,
    pub requirepass: Option<&'a Spanned<String>>,
    pub requirepass_file: Option<&'a Spanned<String>>,
    pub users: &'a [Spanned<RawApiUser>],
    pub allow_unauthenticated_reads: Option<bool>,
}

pub(super) fn validate_api_auth(
    raw: RawApiAuth,
    secret_files: &mut SecretFiles,
) -> Result<ApiAuthConfig, Problem> {
    let requirepass = password(
        raw.section,
        "controller.requirepass",
        raw.requirepass,
        raw.requirepass_file,
        secret_files,
    )?;
    let mut names = HashSet::new();
    let mut users = Vec::new();
    for (i, spanned) in raw.users.iter().enumerate() {
        let u = spanned.get_ref();
        let key = |field: &str| format!("controller.users[{i}].{field}");
        let name = u.name.get_ref();
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_graphic()) {
            return Err(problem(
                &u.name,
                key("name"),
                format!("{name:?} is not a valid user name (printable, no spaces)"),
            ));
        }
        if name == DEFAULT_USER && requirepass.is_some() {
            return Err(problem(
                &u.name,
                key("name"),
                "\"default\" is the user requirepass sets: remove one of the two",
            ));
        }
        if !names.insert(name.clone()) {
            return Err(problem(
                &u.name,
                key("name"),
                format!("{name:?} is used twice"),
            ));
        }
        let span = spanned.span();
        let password = password(
            &span,
            &key("password"),
            u.password.as_ref(),
            u.password_file.as_ref(),
            secret_files,
        )?
        .ok_or_else(|| Problem {
            span: span.clone(),
            key: key("password"),
            message: format!(
                "{}: set one of `password` and `password_file`",
                key("password")
            ),
        })?;
        users.push(ApiUser {
            name: name.clone(),
            password,
            password_file: u.password_file.as_ref().map(|f| PathBuf::from(f.get_ref())),
            access: u.access,
        });
    }
    Ok(ApiAuthConfig {
        requirepass,
        requirepass_file: raw.requirepass_file.map(|f| PathBuf::from(f.get_ref())),
        users,
        allow_unauthenticated_reads: raw.allow_unauthenticated_reads.unwrap_or(false),
    })
}

/// A password given inline (`key`) or in a file (`key_file`), at most one of the two. An
/// empty one is refused: it would read as "no password" to some clients and as a password to
/// others. A file that cannot be read (under [`SecretFiles::Defer`]) gives an empty password.
fn password(
    section: &std::ops::Range<usize>,
    key: &str,
    inline: Option<&Spanned<String>>,
    file: Option<&Spanned<String>>,
    secret_files: &mut SecretFiles,
) -> Result<Option<String>, Problem> {
    let file_key = format!("{key}_file");
    let (value, at) = match (inline, file) {
        (None, None) => return Ok(None),
        (Some(p), None) => (Some(p.get_ref().clone()), p),
        (None, Some(f)) => (read_secret_file(f, &file_key, secret_files)?, f),
        (Some(_), Some(_)) => {
            return Err(Problem {
                span: section.clone(),
                key: key.to_owned(),
                message: format!(
                    "{key}: set at most one of `{}` and `{}`",
                    leaf(key),
                    leaf(&file_key)
                ),
            });
        }
    };
    match value {
        Some(v) if v.is_empty() => Err(problem(
            at,
            if file.is_some() {
                file_key
            } else {
                key.to_owned()
            },
            "the password is empty: leave the key out for no password",
        )),
        Some(v) => Ok(Some(v)),
        None => Ok(Some(String::new())),
    }
}

/// `password` of `controller.users[0].password`.
fn leaf(key: &str) -> &str {
    key.rsplit('.').next().unwrap_or(key)
}
