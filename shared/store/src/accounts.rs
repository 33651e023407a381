//! The web console's accounts and sessions. Passwords are kept only as Argon2id
//! hashes (PHC strings, salt and parameters inside); a session token, given to the
//! browser once, is kept only as its SHA-256, so reading this table opens no session.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use rand::RngCore;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::{Store, StoreError};

/// What an account may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Reads everything, personal data masked.
    Viewer,
    /// Also requeues, purges, restores and reveals personal data.
    Operator,
}

impl Role {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
        }
    }

    /// Parses the stored name.
    pub fn from_name(s: &str) -> Option<Role> {
        match s {
            "viewer" => Some(Role::Viewer),
            "operator" => Some(Role::Operator),
            _ => None,
        }
    }
}

/// A signed-in person.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// The account's name (what the audit trail shows).
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// Its language, when chosen (`en` or `pt-BR`); otherwise the browser's.
    pub lang: Option<String>,
}

/// An open session: who, and the token every form of it must carry.
#[derive(Debug, Clone)]
pub struct Session {
    /// Who.
    pub account: Account,
    /// The anti-forgery token of this session.
    pub csrf: String,
}

/// Random bytes as hex, for tokens.
pub fn token(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn sha256(s: &str) -> String {
    Sha256::digest(s.as_bytes())
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

/// An Argon2id hash of `password` (default parameters, a fresh salt).
pub fn hash_password(password: &str) -> Result<String, StoreError> {
    let mut salt = [0u8; 16];
    rand::rng().fill_bytes(&mut salt);
    let salt = SaltString::encode_b64(&salt).map_err(|e| StoreError::Config(e.to_string()))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| StoreError::Config(format!("cannot hash the password: {e}")))
}

fn password_matches(password: &str, stored: &str) -> bool {
    PasswordHash::new(stored)
        .map(|h| {
            Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        })
        .unwrap_or(false)
}

fn account_of(name: String, role: &str, lang: Option<String>) -> Option<Account> {
    Role::from_name(role).map(|role| Account { name, role, lang })
}

/// What an account without a password keeps instead of a hash: no password matches
/// it (it is not a hash at all), so it signs in only through a trusted sign-in proxy.
const NO_PASSWORD: &str = "!no-password";

impl Store {
    /// Adds an account, or replaces its password, role and language. With no
    /// password the account signs in only through the console's trusted sign-in
    /// proxy (SSO).
    pub async fn put_account(
        &self,
        name: &str,
        password: Option<&str>,
        role: Role,
        lang: Option<&str>,
    ) -> Result<(), StoreError> {
        let hash = match password {
            Some(p) => hash_password(p)?,
            None => NO_PASSWORD.to_string(),
        };
        let client = self.pool.get().await?;
        client
            .execute(
                "INSERT INTO console_users (name, password_hash, role, lang) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (name) DO UPDATE
                 SET password_hash = EXCLUDED.password_hash, role = EXCLUDED.role,
                     lang = EXCLUDED.lang",
                &[&name, &hash, &role.as_str(), &lang],
            )
            .await?;
        // A changed password or role ends the account's sessions.
        client
            .execute(
                "DELETE FROM console_sessions WHERE user_name = $1",
                &[&name],
            )
            .await?;
        Ok(())
    }

    /// Removes an account (and its sessions); `false` if there was none.
    pub async fn remove_account(&self, name: &str) -> Result<bool, StoreError> {
        let client = self.pool.get().await?;
        Ok(client
            .execute("DELETE FROM console_users WHERE name = $1", &[&name])
            .await?
            == 1)
    }

    /// Every account, by name.
    pub async fn accounts(&self) -> Result<Vec<Account>, StoreError> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "SELECT name, role, lang FROM console_users ORDER BY name",
                &[],
            )
            .await?;
        Ok(rows
            .iter()
            .filter_map(|r| account_of(r.get(0), r.get::<_, &str>(1), r.get(2)))
            .collect())
    }

    /// Checks a name and password; on success opens a session for `ttl` and returns
    /// its token (for the cookie) and the session. A wrong name and a wrong password
    /// look the same, and take the same time (a hash is checked either way).
    pub async fn sign_in(
        &self,
        name: &str,
        password: &str,
        ttl: std::time::Duration,
    ) -> Result<Option<(String, Session)>, StoreError> {
        let (stored, account) = match self.account(name).await? {
            // An account without a password is checked against the same made-up hash
            // as a name that does not exist: the same time, and no match.
            Some((hash, _)) if hash == NO_PASSWORD => (NOBODY.to_string(), None),
            Some((hash, account)) => (hash, Some(account)),
            None => (NOBODY.to_string(), None),
        };
        // Argon2 takes tens of milliseconds and 19 MiB by design: on a blocking thread,
        // with no database connection held meanwhile.
        let password = password.to_string();
        let matches = tokio::task::spawn_blocking(move || password_matches(&password, &stored))
            .await
            .unwrap_or(false);
        let Some(account) = account.filter(|_| matches) else {
            return Ok(None);
        };
        Ok(Some(self.start_session(account, ttl).await?))
    }

    /// Opens a session for `name`, vouched for by the console's trusted sign-in proxy
    /// (no password checked here); `None` when there is no such account.
    pub async fn open_session(
        &self,
        name: &str,
        ttl: std::time::Duration,
    ) -> Result<Option<(String, Session)>, StoreError> {
        let Some((_, account)) = self.account(name).await? else {
            return Ok(None);
        };
        Ok(Some(self.start_session(account, ttl).await?))
    }

    /// The account `name` and what it keeps instead of its password.
    async fn account(&self, name: &str) -> Result<Option<(String, Account)>, StoreError> {
        let client = self.pool.get().await?;
        let row = client
            .query_opt(
                "SELECT name, password_hash, role, lang FROM console_users WHERE name = $1",
                &[&name],
            )
            .await?;
        Ok(row.and_then(|r| {
            account_of(r.get(0), r.get::<_, &str>(2), r.get(3)).map(|a| (r.get(1), a))
        }))
    }

    /// Sets the language an account's pages are in (`None`: the browser's); `false`
    /// when there is no such account. Its sessions go on, in the new language.
    pub async fn set_account_lang(
        &self,
        name: &str,
        lang: Option<&str>,
    ) -> Result<bool, StoreError> {
        let client = self.pool.get().await?;
        Ok(client
            .execute(
                "UPDATE console_users SET lang = $2 WHERE name = $1",
                &[&name, &lang],
            )
            .await?
            == 1)
    }

    async fn start_session(
        &self,
        account: Account,
        ttl: std::time::Duration,
    ) -> Result<(String, Session), StoreError> {
        let client = self.pool.get().await?;
        // Expired sessions go as new ones come (a sign-in proxy opens one per browser).
        client
            .execute(
                "DELETE FROM console_sessions WHERE expires_at <= now()",
                &[],
            )
            .await?;
        let token = token(32);
        let csrf = token_csrf();
        let expires = OffsetDateTime::now_utc() + ttl;
        client
            .execute(
                "INSERT INTO console_sessions (token_sha256, user_name, csrf, expires_at)
                 VALUES ($1, $2, $3, $4)",
                &[&sha256(&token), &account.name, &csrf, &expires],
            )
            .await?;
        Ok((token, Session { account, csrf }))
    }

    /// The session a cookie's token opens, if it has not expired.
    pub async fn session(&self, token: &str) -> Result<Option<Session>, StoreError> {
        let client = self.pool.get().await?;
        let row = client
            .query_opt(
                "SELECT u.name, u.role, u.lang, s.csrf
                 FROM console_sessions s JOIN console_users u ON u.name = s.user_name
                 WHERE s.token_sha256 = $1 AND s.expires_at > now()",
                &[&sha256(token)],
            )
            .await?;
        Ok(row.and_then(|r| {
            account_of(r.get(0), r.get::<_, &str>(1), r.get(2)).map(|account| Session {
                account,
                csrf: r.get(3),
            })
        }))
    }

    /// Ends a session (signing out), and any expired ones.
    pub async fn sign_out(&self, token: &str) -> Result<(), StoreError> {
        let client = self.pool.get().await?;
        client
            .execute(
                "DELETE FROM console_sessions WHERE token_sha256 = $1 OR expires_at <= now()",
                &[&sha256(token)],
            )
            .await?;
        Ok(())
    }
}

/// A well-formed hash no password matches, checked when the name is unknown so that
/// the answer takes as long as for a known name.
const NOBODY: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$c2tlZWxvLW5vYm9keQ$WmTQ0t3J6YcC4ym1qO/QJp8sOq0mB0xHn0zYJ8tW1cQ";

fn token_csrf() -> String {
    token(24)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_checks_against_its_own_hash_only() {
        let h = hash_password("correct horse").expect("hash");
        assert!(h.starts_with("$argon2id$"));
        assert!(password_matches("correct horse", &h));
        assert!(!password_matches("correct horsf", &h));
        assert!(!password_matches("correct horse", "not a hash"));
        assert_ne!(h, hash_password("correct horse").expect("hash"), "salted");
    }

    #[test]
    fn the_stand_in_hash_reads_as_a_hash() {
        assert!(PasswordHash::new(NOBODY).is_ok());
        assert!(!password_matches("", NOBODY));
    }

    #[test]
    fn tokens_are_long_random_hex() {
        let a = token(32);
        assert_eq!(a.len(), 64);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, token(32));
        assert_eq!(sha256("abc").len(), 64);
    }
}
