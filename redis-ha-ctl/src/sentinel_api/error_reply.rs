//! How the daemon's [`ApiError`] answers a RESP client: Redis's `-CODE message`.

use crate::{daemon::control::ApiError, resp::Reply};

impl ApiError {
    pub(crate) fn reply(&self) -> Reply {
        Reply::Error(format!("{} {}", self.code, self.message))
    }
}
