//! Authentication by bearer tokens and authorization by per-token grants.
//!
//! ## The token file
//!
//! ```toml
//! [[token]]
//! name = "billing-service"         # the identity logged with its administrative actions
//! sha256 = "5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8"
//! topics = { "orders" = ["produce", "consume"], "billing.*" = ["administer"] }
//! groups = { "billing-*" = ["consume"] }
//! ```
//!
//! A grant's key is a topic (or group) name, or a prefix followed by `*`; `"*"` alone is
//! every name. Actions: `produce`, `consume`, `administer` (for groups: `consume`,
//! `administer`). Unknown keys, bad digests, duplicate names or digests and unknown actions
//! are refused, naming them.
//!
//! Only the SHA-256 digest of each token is stored. Tokens are random secrets of 256 bits
//! (`spool token create` makes them), so a slow password hash such as argon2 would add no
//! protection against guessing, and it would cost milliseconds on every call and every
//! message of every stream, where the token is checked again. A fast digest cannot be run
//! backwards, and looking up a digest in a map leaks nothing useful about the token.
//!
//! ## What is checked where
//!
//! - [`AuthLayer`] (an interceptor on every `spool.v1` service) reads `authorization:
//!   Bearer TOKEN`, refuses a call without a known token with `UNAUTHENTICATED`, and leaves a
//!   [`Caller`] in the request.
//! - Every service method asks [`Caller::allow`] before it touches a topic or group; a stream
//!   asks again for every message, against the token file as it is *now*: a token removed
//!   from the file (then reloaded) stops working mid-stream (`UNAUTHENTICATED`), and a grant
//!   removed stops the next message (`PERMISSION_DENIED`).
//! - Permission is decided from the name alone, before looking the topic up, so a caller
//!   without a grant gets `PERMISSION_DENIED` whether the topic exists or not, and ListTopics
//!   shows only the topics the caller holds some grant on.
//! - Health and reflection need no token: load balancers probe health, and reflection
//!   describes the public API, not the data.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::SystemTime;

use serde::Deserialize;
use sha2::{Digest, Sha256};
use thiserror::Error;
use tonic::{Request, Status};

/// What a caller wants to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Produce,
    Consume,
    Administer,
    /// See that it exists and how it is configured: allowed by any of the others.
    Describe,
}

impl Action {
    fn bit(self) -> u8 {
        match self {
            Action::Produce => 1,
            Action::Consume => 2,
            Action::Administer => 4,
            Action::Describe => 7,
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Produce => "produce to",
            Action::Consume => "consume from",
            Action::Administer => "administer",
            Action::Describe => "describe",
        })
    }
}

/// What an action is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource<'a> {
    Topic(&'a str),
    Group(&'a str),
}

/// Which kind of [`Resource`] a refusal was about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResourceKind {
    Topic,
    Group,
}

impl Resource<'_> {
    pub fn kind(&self) -> ResourceKind {
        match self {
            Resource::Topic(_) => ResourceKind::Topic,
            Resource::Group(_) => ResourceKind::Group,
        }
    }
}

impl fmt::Display for Resource<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Resource::Topic(name) => write!(f, "topic {name}"),
            Resource::Group(name) => write!(f, "group {name}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AuthError {
    #[error("this server needs a token: send the header `authorization: Bearer TOKEN`")]
    NoToken,
    #[error("the authorization header is not `Bearer TOKEN`")]
    Malformed,
    #[error("the token is not valid (unknown, or revoked)")]
    UnknownToken,
    #[error("{identity} may not {action} {resource}")]
    Denied { identity: String, action: Action, resource: String, kind: ResourceKind },
    #[error("{identity} may not read metrics (the token file grants it with `metrics = true`)")]
    NoMetricsGrant { identity: String },
}

#[derive(Debug, Error)]
pub enum LoadTokensError {
    #[error("cannot read the token file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("the token file {path} is not valid: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error(
        "the token file {} may be changed by every user of this machine (mode {mode:o}): make it writable by its owner only (chmod o-w)",
        .path.display()
    )]
    WorldWritable { path: PathBuf, mode: u32 },
}

/// A name or a prefix (written with a trailing `*`).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Pattern {
    Exact(String),
    Prefix(String),
}

impl Pattern {
    fn parse(pattern: &str) -> Pattern {
        match pattern.strip_suffix('*') {
            Some(prefix) => Pattern::Prefix(prefix.to_owned()),
            None => Pattern::Exact(pattern.to_owned()),
        }
    }

    fn matches(&self, name: &str) -> bool {
        match self {
            Pattern::Exact(exact) => exact == name,
            Pattern::Prefix(prefix) => name.starts_with(prefix.as_str()),
        }
    }
}

#[derive(Debug, Clone)]
struct Grant {
    pattern: Pattern,
    /// Bits of [`Action::bit`].
    actions: u8,
}

/// One token's identity and grants.
#[derive(Debug)]
pub struct Principal {
    name: String,
    topics: Vec<Grant>,
    groups: Vec<Grant>,
    metrics: bool,
}

impl Principal {
    pub fn name(&self) -> &str {
        &self.name
    }

    fn may(&self, action: Action, resource: Resource<'_>) -> bool {
        let (grants, name) = match resource {
            Resource::Topic(name) => (&self.topics, name),
            Resource::Group(name) => (&self.groups, name),
        };
        grants.iter().any(|g| g.actions & action.bit() != 0 && g.pattern.matches(name))
    }
}

pub(crate) type TokenDigest = [u8; 32];

/// The SHA-256 digest of a token, as the token file stores it (lowercase hex).
pub fn token_digest_hex(token: &str) -> String {
    Sha256::digest(token.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

fn parse_digest(hex: &str) -> Option<TokenDigest> {
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut digest = [0u8; 32];
    for (i, byte) in digest.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(digest)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenFile {
    #[serde(default)]
    token: Vec<TokenEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenEntry {
    name: String,
    sha256: String,
    #[serde(default)]
    topics: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    groups: BTreeMap<String, Vec<String>>,
    /// Whether the token may read `/metrics`, which names every topic and group.
    #[serde(default)]
    metrics: bool,
}

fn grants(
    token: &str,
    kind: &str,
    table: &BTreeMap<String, Vec<String>>,
    allowed: &[(&str, Action)],
) -> Result<Vec<Grant>, String> {
    let mut grants = Vec::with_capacity(table.len());
    for (pattern, actions) in table {
        let mut bits = 0u8;
        for action in actions {
            let Some((_, action)) = allowed.iter().find(|(name, _)| name == action) else {
                let names: Vec<_> = allowed.iter().map(|(name, _)| *name).collect();
                return Err(format!(
                    "token {token:?}: {kind} {pattern:?}: unknown action {action:?} (one of {})",
                    names.join(", ")
                ));
            };
            bits |= action.bit();
        }
        grants.push(Grant { pattern: Pattern::parse(pattern), actions: bits });
    }
    Ok(grants)
}

/// The tokens of one version of the file.
#[derive(Debug, Default)]
struct Tokens {
    by_digest: HashMap<TokenDigest, Arc<Principal>>,
}

impl Tokens {
    fn parse(text: &str) -> Result<Tokens, String> {
        let file: TokenFile = toml::from_str(text).map_err(|e| e.to_string())?;
        let topic_actions = [
            ("produce", Action::Produce),
            ("consume", Action::Consume),
            ("administer", Action::Administer),
        ];
        let group_actions = [("consume", Action::Consume), ("administer", Action::Administer)];
        let mut tokens = Tokens::default();
        let mut names = std::collections::HashSet::new();
        for entry in file.token {
            let digest = parse_digest(&entry.sha256).ok_or_else(|| {
                format!("token {:?}: sha256 must be 64 hexadecimal digits", entry.name)
            })?;
            if !names.insert(entry.name.clone()) {
                return Err(format!("token name {:?} appears twice", entry.name));
            }
            let principal = Principal {
                topics: grants(&entry.name, "topic", &entry.topics, &topic_actions)?,
                groups: grants(&entry.name, "group", &entry.groups, &group_actions)?,
                metrics: entry.metrics,
                name: entry.name,
            };
            if tokens.by_digest.insert(digest, Arc::new(principal)).is_some() {
                return Err(format!("sha256 {} appears twice", entry.sha256));
            }
        }
        Ok(tokens)
    }
}

/// The token file, loaded; [`Authenticator::reload`] reads it again.
#[derive(Debug)]
pub struct Authenticator {
    path: PathBuf,
    tokens: RwLock<Arc<Tokens>>,
    /// The file's modification time and length when last loaded.
    loaded: RwLock<Option<(SystemTime, u64)>>,
    /// Counts reloads, successful or not, so idle streams check their grants again at once.
    reloads: tokio::sync::watch::Sender<u64>,
}

impl Authenticator {
    pub fn load(path: &Path) -> Result<Authenticator, LoadTokensError> {
        let authenticator = Authenticator {
            path: path.to_path_buf(),
            tokens: RwLock::new(Arc::new(Tokens::default())),
            loaded: RwLock::new(None),
            reloads: tokio::sync::watch::Sender::new(0),
        };
        authenticator.reload()?;
        Ok(authenticator)
    }

    /// Reads the file again. Returns how many tokens are now in force.
    ///
    /// It fails closed: when the file cannot be read or is not valid (deleted, a syntax error,
    /// writable by every user), no token is in force until it loads again, so an edit that
    /// revokes a token can never leave that token working because of a typo elsewhere.
    pub fn reload(&self) -> Result<usize, LoadTokensError> {
        let reloaded = self.replace_tokens();
        crate::metrics::token_file_loaded(reloaded.is_ok());
        self.reloads.send_modify(|count| *count += 1);
        reloaded
    }

    fn replace_tokens(&self) -> Result<usize, LoadTokensError> {
        match self.read_tokens() {
            Ok((tokens, stamp)) => {
                let count = tokens.by_digest.len();
                *self.tokens.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(tokens);
                *self.loaded.write().unwrap_or_else(PoisonError::into_inner) = Some(stamp);
                Ok(count)
            }
            Err(error) => {
                *self.tokens.write().unwrap_or_else(PoisonError::into_inner) =
                    Arc::new(Tokens::default());
                *self.loaded.write().unwrap_or_else(PoisonError::into_inner) = None;
                Err(error)
            }
        }
    }

    fn read_tokens(&self) -> Result<(Tokens, (SystemTime, u64)), LoadTokensError> {
        use std::os::unix::fs::PermissionsExt;
        let read = |source| LoadTokensError::Read { path: self.path.clone(), source };
        let stamp = file_stamp(&self.path).map_err(read)?;
        let mode = std::fs::metadata(&self.path).map_err(read)?.permissions().mode();
        if mode & 0o002 != 0 {
            return Err(LoadTokensError::WorldWritable {
                path: self.path.clone(),
                mode: mode & 0o7777,
            });
        }
        let text = std::fs::read_to_string(&self.path).map_err(read)?;
        let tokens = Tokens::parse(&text)
            .map_err(|reason| LoadTokensError::Invalid { path: self.path.clone(), reason })?;
        Ok((tokens, stamp))
    }

    /// Reloads the file if its modification time or length changed since it was loaded (or
    /// since it last failed to load); failing closed as [`Authenticator::reload`] does.
    pub fn reload_if_changed(&self) -> Result<Option<usize>, LoadTokensError> {
        let unchanged = match file_stamp(&self.path) {
            Ok(stamp) => *self.loaded.read().unwrap_or_else(PoisonError::into_inner) == Some(stamp),
            Err(_) => false,
        };
        if unchanged {
            return Ok(None);
        }
        self.reload().map(Some)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn principal(&self, digest: &TokenDigest) -> Option<Arc<Principal>> {
        self.tokens.read().unwrap_or_else(PoisonError::into_inner).by_digest.get(digest).cloned()
    }

    /// Allows reading `/metrics` to the token an HTTP `authorization` header carries, if
    /// the token file grants it `metrics = true`.
    pub(crate) fn allow_scrape(&self, authorization: Option<&[u8]>) -> Result<(), AuthError> {
        let header = authorization.ok_or(AuthError::NoToken)?;
        let token = bearer(std::str::from_utf8(header).ok()).ok_or(AuthError::Malformed)?;
        let digest: TokenDigest = Sha256::digest(token.as_bytes()).into();
        let principal = self.principal(&digest).ok_or(AuthError::UnknownToken)?;
        if principal.metrics {
            Ok(())
        } else {
            Err(AuthError::NoMetricsGrant { identity: principal.name.clone() })
        }
    }
}

/// The token in an `authorization` header's value `Bearer TOKEN`.
fn bearer(value: Option<&str>) -> Option<&str> {
    value
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|token| !token.is_empty())
}

fn file_stamp(path: &Path) -> std::io::Result<(SystemTime, u64)> {
    let metadata = std::fs::metadata(path)?;
    Ok((metadata.modified()?, metadata.len()))
}

/// Reloads of the token file since [`Caller::watch_reloads`].
pub(crate) struct TokenReloads(Option<tokio::sync::watch::Receiver<u64>>);

impl TokenReloads {
    /// The reloads of `authenticator`'s file from now on.
    pub(crate) fn of(authenticator: &Authenticator) -> TokenReloads {
        TokenReloads(Some(authenticator.reloads.subscribe()))
    }

    /// No reloads ever (a server without tokens).
    pub(crate) fn none() -> TokenReloads {
        TokenReloads(None)
    }

    /// Resolves at the next reload (never without tokens).
    pub(crate) async fn next(&mut self) {
        let reloaded = match &mut self.0 {
            Some(reloads) => reloads.changed().await.is_ok(),
            None => false,
        };
        if !reloaded {
            std::future::pending::<()>().await;
        }
    }
}

/// Who is calling, as the interceptor found it.
#[derive(Debug, Clone)]
pub struct Caller {
    kind: CallerKind,
}

#[derive(Debug, Clone)]
enum CallerKind {
    /// Tokens are not configured: everything is allowed.
    Open,
    Token {
        authenticator: Arc<Authenticator>,
        digest: TokenDigest,
    },
}

impl Caller {
    /// The caller of a server without tokens: everything is allowed.
    pub(crate) fn open() -> Caller {
        Caller { kind: CallerKind::Open }
    }

    /// The caller presenting `token`, if the file holds it (the Kafka listener's SASL/PLAIN
    /// password, the other listeners' bearer token).
    pub(crate) fn with_token(
        authenticator: &Arc<Authenticator>,
        token: &str,
    ) -> Result<Caller, AuthError> {
        let digest: TokenDigest = Sha256::digest(token.as_bytes()).into();
        authenticator.principal(&digest).ok_or(AuthError::UnknownToken)?;
        Ok(Caller { kind: CallerKind::Token { authenticator: authenticator.clone(), digest } })
    }

    /// The caller the interceptor left in `request`. A request that did not pass the
    /// interceptor is a bug: services are only ever registered behind it.
    pub fn of<T>(request: &Request<T>) -> Caller {
        request.extensions().get::<Caller>().cloned().expect("every service runs behind AuthLayer")
    }

    /// Allows `action` on `resource` if the token is still in the file and grants it.
    pub fn allow(&self, action: Action, resource: Resource<'_>) -> Result<(), AuthError> {
        let CallerKind::Token { authenticator, digest } = &self.kind else {
            return Ok(());
        };
        let principal = authenticator.principal(digest).ok_or(AuthError::UnknownToken)?;
        if principal.may(action, resource) {
            Ok(())
        } else {
            Err(AuthError::Denied {
                identity: principal.name.clone(),
                action,
                resource: resource.to_string(),
                kind: resource.kind(),
            })
        }
    }

    /// Watches the token file's reloads from now on. A stream that waits for records takes
    /// this, then checks its grant, then waits on [`TokenReloads::next`] beside the records:
    /// a revocation then ends it at once, and none can slip in between the check and the wait.
    pub(crate) fn watch_reloads(&self) -> TokenReloads {
        match &self.kind {
            CallerKind::Open => TokenReloads(None),
            CallerKind::Token { authenticator, .. } => {
                TokenReloads(Some(authenticator.reloads.subscribe()))
            }
        }
    }

    /// The caller's token (its digest), or `None` without tokens.
    pub(crate) fn token(&self) -> Option<TokenDigest> {
        match &self.kind {
            CallerKind::Open => None,
            CallerKind::Token { digest, .. } => Some(*digest),
        }
    }

    /// Checks that the token is still in the file.
    pub fn check_token(&self) -> Result<(), AuthError> {
        match &self.kind {
            CallerKind::Open => Ok(()),
            CallerKind::Token { authenticator, digest } => {
                authenticator.principal(digest).map(drop).ok_or(AuthError::UnknownToken)
            }
        }
    }

    /// Whether the caller holds any grant on topic `name` (what ListTopics shows).
    pub fn may_see_topic(&self, name: &str) -> bool {
        self.allow(Action::Describe, Resource::Topic(name)).is_ok()
    }

    /// The identity for the log: the token's name, or `anonymous` without tokens.
    pub fn identity(&self) -> String {
        match &self.kind {
            CallerKind::Open => "anonymous".to_owned(),
            CallerKind::Token { authenticator, digest } => authenticator
                .principal(digest)
                .map_or_else(|| "revoked token".to_owned(), |p| p.name.clone()),
        }
    }
}

/// The interceptor in front of every `spool.v1` service.
#[derive(Debug, Clone)]
pub struct AuthLayer {
    authenticator: Option<Arc<Authenticator>>,
}

impl AuthLayer {
    pub(crate) fn new(authenticator: Option<Arc<Authenticator>>) -> AuthLayer {
        AuthLayer { authenticator }
    }

    fn caller(&self, request: &Request<()>) -> Result<Caller, AuthError> {
        let Some(authenticator) = &self.authenticator else {
            return Ok(Caller::open());
        };
        let header = request.metadata().get("authorization").ok_or(AuthError::NoToken)?;
        let token = bearer(header.to_str().ok()).ok_or(AuthError::Malformed)?;
        Caller::with_token(authenticator, token)
    }
}

impl tonic::service::Interceptor for AuthLayer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        match self.caller(&request) {
            Ok(caller) => {
                request.extensions_mut().insert(caller);
                Ok(request)
            }
            Err(error) => Err(crate::error::to_status(&error.into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
        [[token]]
        name = "alice"
        sha256 = "2bd806c97f0e00af1a1fc3328fa763a9269723c8db8fac4f93af71db186d6e90"
        topics = { "orders" = ["produce"], "logs.*" = ["consume", "administer"] }
        groups = { "billing-*" = ["consume"] }

        [[token]]
        name = "root"
        sha256 = "4813494d137e1631bba301d5acab6e7bb7aa74ce1185d456565ef51d737677b2"
        topics = { "*" = ["produce", "consume", "administer"] }
    "#;

    fn caller(file: &str, token: &str) -> Result<Caller, AuthError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.toml");
        std::fs::write(&path, file).unwrap();
        let layer = AuthLayer::new(Some(Arc::new(Authenticator::load(&path).unwrap())));
        let mut request = Request::new(());
        if !token.is_empty() {
            request
                .metadata_mut()
                .insert("authorization", format!("Bearer {token}").parse().unwrap());
        }
        layer.caller(&request)
    }

    #[test]
    fn digests_are_sha256_hex() {
        assert_eq!(
            token_digest_hex("alice"),
            "2bd806c97f0e00af1a1fc3328fa763a9269723c8db8fac4f93af71db186d6e90"
        );
    }

    #[test]
    fn grants_allow_exactly_what_they_name() {
        let alice = caller(FILE, "alice").unwrap();
        let check = |action, resource, allowed: bool| {
            assert_eq!(alice.allow(action, resource).is_ok(), allowed, "{action:?} {resource:?}");
        };
        check(Action::Produce, Resource::Topic("orders"), true);
        check(Action::Consume, Resource::Topic("orders"), false);
        check(Action::Administer, Resource::Topic("orders"), false);
        check(Action::Produce, Resource::Topic("orders2"), false);
        check(Action::Consume, Resource::Topic("logs.app"), true);
        check(Action::Administer, Resource::Topic("logs.app"), true);
        check(Action::Produce, Resource::Topic("logs.app"), false);
        check(Action::Consume, Resource::Topic("logs"), false);
        check(Action::Consume, Resource::Group("billing-eu"), true);
        check(Action::Administer, Resource::Group("billing-eu"), false);
        check(Action::Consume, Resource::Topic("billing-eu"), false);
        assert!(alice.may_see_topic("orders"));
        assert!(!alice.may_see_topic("secret"));
        assert_eq!(alice.identity(), "alice");
        let root = caller(FILE, "root").unwrap();
        assert!(root.allow(Action::Administer, Resource::Topic("anything")).is_ok());
        assert!(root.allow(Action::Consume, Resource::Group("g")).is_err());
    }

    #[test]
    fn missing_unknown_and_malformed_tokens_are_refused() {
        assert_eq!(caller(FILE, "").unwrap_err(), AuthError::NoToken);
        assert_eq!(caller(FILE, "mallory").unwrap_err(), AuthError::UnknownToken);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.toml");
        std::fs::write(&path, FILE).unwrap();
        let layer = AuthLayer::new(Some(Arc::new(Authenticator::load(&path).unwrap())));
        let mut request = Request::new(());
        request.metadata_mut().insert("authorization", "Basic YWxpY2U6".parse().unwrap());
        assert_eq!(layer.caller(&request).unwrap_err(), AuthError::Malformed);
    }

    #[test]
    fn bad_files_are_refused_naming_the_problem() {
        let check = |file: &str, message_has: &str| {
            let error = Tokens::parse(file).unwrap_err();
            assert!(error.contains(message_has), "{error:?} lacks {message_has:?}");
        };
        check("[[token]]\nname = \"a\"\nsha256 = \"00\"\n", "64 hexadecimal digits");
        check(
            &format!("[[token]]\nname = \"a\"\nsha256 = \"{}\"\ncolour = 1\n", "0".repeat(64)),
            "colour",
        );
        check(
            &format!(
                "[[token]]\nname = \"a\"\nsha256 = \"{}\"\ntopics = {{ \"t\" = [\"write\"] }}\n",
                "0".repeat(64)
            ),
            "unknown action \"write\"",
        );
        check(
            &format!(
                "[[token]]\nname = \"a\"\nsha256 = \"{}\"\ngroups = {{ \"g\" = [\"produce\"] }}\n",
                "0".repeat(64)
            ),
            "unknown action \"produce\"",
        );
        check(
            &format!(
                "[[token]]\nname = \"a\"\nsha256 = \"{0}\"\n[[token]]\nname = \"a\"\nsha256 = \"{1}\"\n",
                "0".repeat(64),
                "1".repeat(64)
            ),
            "appears twice",
        );
    }

    #[test]
    fn a_file_that_stops_loading_fails_closed_and_a_world_writable_one_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.toml");
        std::fs::write(&path, FILE).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let authenticator = Authenticator::load(&path).unwrap();
        let alice = parse_digest(&token_digest_hex("alice")).unwrap();
        let in_force = |a: &Authenticator| a.tokens.read().unwrap().by_digest.len();
        assert_eq!(in_force(&authenticator), 2);
        assert!(authenticator.principal(&alice).is_some());

        // An edit with a syntax error: nothing is in force, not the tokens from before.
        std::fs::write(&path, "[[token]\nname = ").unwrap();
        assert!(matches!(authenticator.reload(), Err(LoadTokensError::Invalid { .. })));
        assert_eq!(in_force(&authenticator), 0);
        assert!(authenticator.principal(&alice).is_none());
        // Fixed: in force again, at the next check.
        std::fs::write(&path, FILE).unwrap();
        assert_eq!(authenticator.reload_if_changed().unwrap(), Some(2));
        // Deleted: closed again.
        std::fs::remove_file(&path).unwrap();
        assert!(authenticator.reload_if_changed().is_err());
        assert_eq!(in_force(&authenticator), 0);

        // A file every user may write is refused, at start and on reload.
        std::fs::write(&path, FILE).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        let error = Authenticator::load(&path).unwrap_err().to_string();
        assert!(error.contains("chmod o-w"), "{error}");
        assert!(authenticator.reload().is_err());
        assert_eq!(in_force(&authenticator), 0);
    }
}
