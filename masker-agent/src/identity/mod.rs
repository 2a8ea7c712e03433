//! Workload identity: a name bound to a cgroup, optionally backed by a
//! verified OIDC token (e.g. a CI job's ID token).
//!
//! The agent verifies a token presented at tag time against the issuers of
//! its configuration (`[[issuer]]`): the signature against the issuer's JWKS
//! (RS256 or ES256, key chosen by `kid`), then `iss`, `aud`, `exp` and `nbf`
//! with [`LEEWAY_SECS`] of clock skew. The verified claims and the expiry
//! become part of the [`Identity`]; the BPF tag map keeps only the name.
//!
//! ```toml
//! [[issuer]]
//! issuer = "https://token.actions.githubusercontent.com"
//! audience = "masker"
//! jwks_url = "https://token.actions.githubusercontent.com/.well-known/jwks"
//! # jwks_ca_file = "/etc/masker/issuer-ca.pem"  # extra trust anchors (PEM)
//! # jwks_cache_secs = 600                        # keys reused this long
//! # jwks_min_fetch_interval_secs = 30            # at most one fetch per 30 s
//! # audit_claims = ["sub", "repository", "ref"]  # recorded at session start
//!
//! [[issuer]]
//! issuer = "https://gitlab.example.com"
//! audience = "masker"
//! jwks_file = "/etc/masker/gitlab-jwks.json"    # read at each verification
//! ```
//!
//! Verification runs in the agent at tag time; [`jwks`] documents how keys
//! fetched over HTTPS are cached and refetched.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};

pub mod issuer;

use crate::interception::cgroup::CgroupId;
pub mod jwks;

pub use issuer::{IssuerConfig, JwksSource};

/// The verified claims of a token, by name.
pub type Claims = BTreeMap<String, serde_json::Value>;

/// Clock skew tolerated on `nbf` (a token issued by a clock slightly ahead
/// of ours). Not on `exp`: the identity ends at `exp`, at tag time and at
/// connect time alike.
pub const LEEWAY_SECS: u64 = 30;

/// A workload identity: the tag's name, and when backed by a token its
/// verified claims and expiry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Identity {
    pub name: String,
    /// Claims of the verified token (empty without one).
    pub claims: Claims,
    /// The token's `iss`, when there is one.
    pub issuer: Option<String>,
    /// Unix time after which the identity is no longer valid.
    pub expires_at: Option<u64>,
    /// Names of the claims that audit `session_start` events record (the
    /// issuer's `audit_claims` at tag time).
    #[serde(default)]
    pub audit_claims: Vec<String>,
}

/// The identities of the tagged cgroups, by cgroup id, as the agent keeps
/// them under its state dir: the BPF tag map survives an agent restart, and
/// so must each tag's expiry and claims, or a restarted agent could not
/// refuse an expired identity.
pub type Identities = std::collections::HashMap<CgroupId, Identity>;

/// Reads the identities saved at `path`; a missing file is an empty set.
pub fn load_identities(path: &std::path::Path) -> std::io::Result<Identities> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(std::io::Error::other),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Identities::new()),
        Err(e) => Err(e),
    }
}

/// Saves `identities` at `path` (mode 0600; written aside, then renamed, so
/// a crash leaves the old file or the new one).
pub fn save_identities(path: &std::path::Path, identities: &Identities) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("json.tmp");
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
    f.write_all(&serde_json::to_vec(identities).map_err(std::io::Error::other)?)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

impl Identity {
    /// An identity with no token behind it (valid until untagged).
    pub fn named(name: &str) -> Identity {
        Identity {
            name: name.to_string(),
            claims: Claims::new(),
            issuer: None,
            expires_at: None,
            audit_claims: Vec::new(),
        }
    }

    /// The claims of the token behind the identity; `None` when no token was
    /// verified (policy rules with `claims` never match such an identity).
    pub fn verified_claims(&self) -> Option<&Claims> {
        self.issuer.is_some().then_some(&self.claims)
    }

    /// The claims audit events record: those named by the issuer's
    /// `audit_claims` that the token has.
    pub fn audited_claims(&self) -> BTreeMap<&str, &serde_json::Value> {
        self.audit_claims.iter().filter_map(|c| self.claims.get_key_value(c)).map(|(k, v)| (k.as_str(), v)).collect()
    }

    /// Whether the identity has expired at `now`.
    pub fn expired_at(&self, now: SystemTime) -> bool {
        let now = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        self.expires_at.is_some_and(|exp| now >= exp)
    }

    /// The expiry as RFC 3339 UTC, for messages.
    pub fn expiry_text(&self) -> String {
        self.expires_at.map(crate::rfc3339::seconds).unwrap_or_else(|| "never".into())
    }
}

/// Why a token was rejected; the message names the failed check.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TokenError {
    #[error("token is not a JWT: {0}")]
    Malformed(String),
    #[error("token issuer {0:?} is not one of the agent's [[issuer]] entries")]
    UnknownIssuer(String),
    #[error("token has no `iss` claim")]
    NoIssuer,
    #[error("token algorithm {0:?} is not allowed (RS256 or ES256)")]
    Algorithm(String),
    #[error("token key id {kid:?} is not in the JWKS of {issuer}")]
    UnknownKey { issuer: String, kid: String },
    #[error("token has no key id (`kid`) and the JWKS of {0} has more than one key")]
    NoKeyId(String),
    #[error("JWKS of {issuer} ({path}): {message}")]
    Jwks { issuer: String, path: String, message: String },
    #[error("jwks fetch from {url} failed: {reason}")]
    Fetch { url: String, reason: std::sync::Arc<jwks::FetchError> },
    #[error("token signature is invalid")]
    Signature,
    #[error("token expired at {0}")]
    Expired(String),
    #[error("token is not valid before {0}")]
    NotYetValid(String),
    #[error("token audience does not include {0:?}")]
    Audience(String),
    #[error("token has no `exp` claim")]
    NoExpiry,
    #[error("token rejected: {0}")]
    Other(String),
}

/// An `[[issuer]]` whose key source cannot be set up.
#[derive(Debug, thiserror::Error)]
#[error("[[issuer]] {issuer:?}: {source}")]
pub struct VerifierError {
    /// The issuer.
    pub issuer: String,
    /// What failed.
    pub source: jwks::SetupError,
}

/// The agent's token verifier: the `[[issuer]]` entries with their key
/// sources (HTTPS key sets cached across verifications).
#[derive(Debug)]
pub struct Verifier {
    issuers: Vec<(IssuerConfig, Option<jwks::JwksClient>)>,
}

impl Verifier {
    /// Prepares `issuers` (reads the `jwks_ca_file`s; errors name them).
    pub fn new(issuers: &[IssuerConfig]) -> Result<Verifier, VerifierError> {
        let issuers = issuers
            .iter()
            .map(|i| {
                let client = match &i.jwks {
                    JwksSource::File(_) => None,
                    JwksSource::Url { url, ca_file } => Some(
                        jwks::JwksClient::new(i, url, ca_file.as_deref())
                            .map_err(|source| VerifierError { issuer: i.issuer.clone(), source })?,
                    ),
                };
                Ok((i.clone(), client))
            })
            .collect::<Result<_, VerifierError>>()?;
        Ok(Verifier { issuers })
    }

    /// Verifies `token` and returns the identity `name` with the token's
    /// claims, at time `now`. Fetching keys over HTTPS does not block the
    /// runtime; reading a JWKS file does, briefly (a small local file).
    pub async fn verify(&self, token: &str, name: &str, now: SystemTime) -> Result<Identity, TokenError> {
        let token = token.trim();
        let header = jsonwebtoken::decode_header(token).map_err(|e| TokenError::Malformed(e.to_string()))?;
        // Before any key is fetched: a token no key could verify costs nothing.
        let alg = allowed_algorithm(&header)?;
        // Which issuer: read `iss` before the signature check only to pick
        // the keys; nothing else is trusted until the signature verifies.
        let unverified = unverified_claims(token)?;
        let iss = unverified.get("iss").and_then(|v| v.as_str()).ok_or(TokenError::NoIssuer)?;
        let (issuer, client) =
            self.issuers.iter().find(|(i, _)| i.issuer == iss).ok_or_else(|| TokenError::UnknownIssuer(iss.into()))?;
        let jwks = match (&issuer.jwks, client) {
            (JwksSource::Url { url, .. }, Some(client)) => client
                .keys_for(header.kid.as_deref())
                .await
                .map_err(|reason| TokenError::Fetch { url: url.clone(), reason })?,
            (JwksSource::File(path), _) => std::sync::Arc::new(load_jwks(issuer, path)?),
            (JwksSource::Url { .. }, None) => unreachable!("Verifier::new makes a client for every jwks_url"),
        };
        verify_with(token, &header, alg, name, issuer, &jwks, now)
    }
}

/// The token's algorithm if it is one we accept (RS256, ES256).
fn allowed_algorithm(header: &jsonwebtoken::Header) -> Result<Algorithm, TokenError> {
    match header.alg {
        Algorithm::RS256 => Ok(Algorithm::RS256),
        Algorithm::ES256 => Ok(Algorithm::ES256),
        other => Err(TokenError::Algorithm(format!("{other:?}"))),
    }
}

/// Verifies `token` (whose header is `header`, algorithm `alg`) against the
/// key set `jwks` of `issuer`.
fn verify_with(
    token: &str,
    header: &jsonwebtoken::Header,
    alg: Algorithm,
    name: &str,
    issuer: &IssuerConfig,
    jwks: &JwkSet,
    now: SystemTime,
) -> Result<Identity, TokenError> {
    let jwk = match &header.kid {
        Some(kid) => {
            jwks.find(kid).ok_or_else(|| TokenError::UnknownKey { issuer: issuer.issuer.clone(), kid: kid.clone() })?
        }
        None if jwks.keys.len() == 1 => &jwks.keys[0],
        None => return Err(TokenError::NoKeyId(issuer.issuer.clone())),
    };
    let key = DecodingKey::from_jwk(jwk).map_err(|e| TokenError::Jwks {
        issuer: issuer.issuer.clone(),
        path: issuer.jwks_location().to_string(),
        message: e.to_string(),
    })?;

    // Signature first (no time checks in the library: its clock is the
    // system's, ours is `now`).
    let mut validation = Validation::new(alg);
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    let data = jsonwebtoken::decode::<Claims>(token, &key, &validation).map_err(|e| match e.kind() {
        ErrorKind::InvalidSignature => TokenError::Signature,
        ErrorKind::InvalidAlgorithm => TokenError::Algorithm(format!("{alg:?} with this key")),
        _ => TokenError::Other(e.to_string()),
    })?;
    let claims = data.claims;
    let now = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    let exp = claims.get("exp").and_then(|v| v.as_u64()).ok_or(TokenError::NoExpiry)?;
    if now >= exp {
        return Err(TokenError::Expired(crate::rfc3339::seconds(exp)));
    }
    if let Some(nbf) = claims.get("nbf").and_then(|v| v.as_u64())
        && now + LEEWAY_SECS < nbf
    {
        return Err(TokenError::NotYetValid(crate::rfc3339::seconds(nbf)));
    }
    let aud_ok = match claims.get("aud") {
        Some(serde_json::Value::String(a)) => *a == issuer.audience,
        Some(serde_json::Value::Array(list)) => list.iter().any(|a| a.as_str() == Some(&issuer.audience)),
        _ => false,
    };
    if !aud_ok {
        return Err(TokenError::Audience(issuer.audience.clone()));
    }
    Ok(Identity {
        name: name.to_string(),
        claims,
        issuer: Some(issuer.issuer.clone()),
        expires_at: Some(exp),
        audit_claims: issuer.audit_claims.clone(),
    })
}

fn unverified_claims(token: &str) -> Result<serde_json::Map<String, serde_json::Value>, TokenError> {
    use base64::Engine;
    let payload = token.split('.').nth(1).ok_or_else(|| TokenError::Malformed("no payload".into()))?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .map_err(|e| TokenError::Malformed(format!("payload: {e}")))?;
    serde_json::from_slice(&bytes).map_err(|e| TokenError::Malformed(format!("payload: {e}")))
}

fn load_jwks(issuer: &IssuerConfig, path: &Path) -> Result<JwkSet, TokenError> {
    let err =
        |message: String| TokenError::Jwks { issuer: issuer.issuer.clone(), path: path.display().to_string(), message };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    serde_json::from_str(&text).map_err(|e| err(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use issuer::{DEFAULT_JWKS_CACHE_SECS, DEFAULT_JWKS_MIN_FETCH_INTERVAL_SECS};
    use jsonwebtoken::{EncodingKey, Header};
    use std::path::PathBuf;
    use std::time::Duration;

    struct Keys {
        dir: PathBuf,
        pem: String,
    }

    fn b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    /// An ES256 key (rcgen) and a JWKS file holding its public part as `kid`.
    fn keys(tag: &str, kid: &str) -> Keys {
        let dir = std::env::temp_dir().join(format!("masker-jwks-{}-{tag}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let raw = key.public_key_raw();
        let (x, y) = (&raw[1..33], &raw[33..65]);
        let jwks = serde_json::json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256", "use": "sig",
            "x": b64(x), "y": b64(y)}]});
        std::fs::write(dir.join("jwks.json"), jwks.to_string()).unwrap();
        Keys { dir, pem: key.serialize_pem() }
    }

    fn issuer(k: &Keys) -> IssuerConfig {
        IssuerConfig {
            issuer: "https://ci.example".into(),
            audience: "masker".into(),
            jwks: JwksSource::File(k.dir.join("jwks.json")),
            jwks_cache_secs: DEFAULT_JWKS_CACHE_SECS,
            jwks_min_fetch_interval_secs: DEFAULT_JWKS_MIN_FETCH_INTERVAL_SECS,
            audit_claims: vec!["repository".into()],
        }
    }

    /// [`Verifier::verify`] on a throwaway runtime.
    fn verify(token: &str, name: &str, issuers: &[IssuerConfig], now: SystemTime) -> Result<Identity, TokenError> {
        let verifier = Verifier::new(issuers).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(verifier.verify(token, name, now))
    }

    fn token(k: &Keys, kid: &str, claims: serde_json::Value) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(kid.into());
        jsonwebtoken::encode(&header, &claims, &EncodingKey::from_ec_pem(k.pem.as_bytes()).unwrap()).unwrap()
    }

    const NOW: u64 = 1_800_000_000;

    fn claims(exp: u64, nbf: u64, iss: &str, aud: &str) -> serde_json::Value {
        serde_json::json!({"iss": iss, "aud": aud, "exp": exp, "nbf": nbf, "sub": "repo:org/app:ref:refs/heads/main",
            "repository": "org/app"})
    }

    /// RS256: a 2048-bit RSA key made by `openssl` in a temp dir, its
    /// modulus published as `n` in the JWKS.
    #[test]
    fn rs256_tokens_verify_against_an_rsa_jwks() {
        let dir = std::env::temp_dir().join(format!("masker-jwks-{}-rsa", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let key = dir.join("key.pem");
        let run = |args: &[&str]| {
            let out = std::process::Command::new("openssl").args(args).output().expect("openssl");
            assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
            String::from_utf8(out.stdout).unwrap()
        };
        let key_arg = key.to_string_lossy().into_owned();
        run(&["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", &key_arg]);
        let modulus = run(&["rsa", "-in", &key_arg, "-noout", "-modulus"]);
        let hex = modulus.trim().strip_prefix("Modulus=").expect("Modulus=");
        let n: Vec<u8> = (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect();
        let jwks = serde_json::json!({"keys": [{"kty": "RSA", "kid": "r1", "alg": "RS256", "use": "sig",
            "n": b64(&n), "e": "AQAB"}]});
        std::fs::write(dir.join("jwks.json"), jwks.to_string()).unwrap();
        let pem = std::fs::read(&key).unwrap();
        let iss = [issuer(&Keys { dir: dir.clone(), pem: String::new() })];
        let at = UNIX_EPOCH + Duration::from_secs(NOW);
        let sign = |kid: &str, alg: Algorithm| {
            let mut header = Header::new(alg);
            header.kid = Some(kid.into());
            let claims = claims(NOW + 600, NOW - 10, "https://ci.example", "masker");
            jsonwebtoken::encode(&header, &claims, &EncodingKey::from_rsa_pem(&pem).unwrap()).unwrap()
        };
        let id = verify(&sign("r1", Algorithm::RS256), "ci", &iss, at).unwrap();
        assert_eq!(id.claims["repository"], "org/app");
        // The same key under another RSA algorithm is not accepted.
        let e = verify(&sign("r1", Algorithm::RS512), "ci", &iss, at).unwrap_err().to_string();
        assert!(e.contains("not allowed"), "{e}");
        // A signature over other claims fails.
        let good = sign("r1", Algorithm::RS256);
        let mut parts: Vec<&str> = good.split('.').collect();
        let forged = b64(br#"{"iss":"https://ci.example","aud":"masker","exp":1800000600,"repository":"org/evil"}"#);
        parts[1] = &forged;
        let e = verify(&parts.join("."), "ci", &iss, at).unwrap_err().to_string();
        assert!(e.contains("signature"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn each_check_has_its_error() {
        let k = keys("checks", "k1");
        let other = keys("checks-other", "k1");
        let iss = [issuer(&k)];
        let at = UNIX_EPOCH + Duration::from_secs(NOW);
        let ok = token(&k, "k1", claims(NOW + 600, NOW - 10, "https://ci.example", "masker"));
        let id = verify(&ok, "ci", &iss, at).unwrap();
        assert_eq!(id.claims["repository"], "org/app");
        assert_eq!(id.expires_at, Some(NOW + 600));
        assert!(!id.expired_at(at) && id.expired_at(at + Duration::from_secs(600)));

        let t = token(&k, "k1", claims(NOW - 100, NOW - 1000, "https://ci.example", "masker"));
        assert_eq!(verify(&t, "ci", &iss, at).unwrap_err().to_string(), "token expired at 2027-01-15T07:58:20Z");
        let t = token(&k, "k1", claims(NOW + 6000, NOW + 600, "https://ci.example", "masker"));
        assert_eq!(
            verify(&t, "ci", &iss, at).unwrap_err().to_string(),
            "token is not valid before 2027-01-15T08:10:00Z"
        );
        let t = token(&k, "k1", claims(NOW + 600, NOW, "https://evil.example", "masker"));
        assert_eq!(
            verify(&t, "ci", &iss, at).unwrap_err().to_string(),
            "token issuer \"https://evil.example\" is not one of the agent's [[issuer]] entries"
        );
        let t = token(&k, "k1", claims(NOW + 600, NOW, "https://ci.example", "other"));
        assert_eq!(verify(&t, "ci", &iss, at).unwrap_err().to_string(), "token audience does not include \"masker\"");
        let t = token(&other, "k1", claims(NOW + 600, NOW, "https://ci.example", "masker"));
        assert_eq!(verify(&t, "ci", &iss, at).unwrap_err().to_string(), "token signature is invalid");
        let t = token(&k, "k9", claims(NOW + 600, NOW, "https://ci.example", "masker"));
        assert_eq!(
            verify(&t, "ci", &iss, at).unwrap_err().to_string(),
            "token key id \"k9\" is not in the JWKS of https://ci.example"
        );
        // `nbf` within the clock skew is accepted; `exp` has no skew: the
        // identity would be refused at connect time from `exp` on.
        let t = token(&k, "k1", claims(NOW + 60, NOW + 5, "https://ci.example", "masker"));
        verify(&t, "ci", &iss, at).unwrap();
        let t = token(&k, "k1", claims(NOW - 5, NOW - 60, "https://ci.example", "masker"));
        assert!(matches!(verify(&t, "ci", &iss, at), Err(TokenError::Expired(_))));
        assert!(matches!(verify("garbage", "ci", &iss, at), Err(TokenError::Malformed(_))));
        // A symmetric algorithm is refused before any key is looked up (an
        // issuer whose keys are at a URL nothing serves is not contacted).
        let hs = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims(NOW + 600, NOW, "https://ci.example", "masker"),
            &EncodingKey::from_secret(b"guessable"),
        )
        .unwrap();
        let unreachable = IssuerConfig {
            jwks: JwksSource::Url { url: "https://127.0.0.1:9/jwks".into(), ca_file: None },
            ..issuer(&k)
        };
        assert_eq!(
            verify(&hs, "ci", &[unreachable], at).unwrap_err().to_string(),
            "token algorithm \"HS256\" is not allowed (RS256 or ES256)"
        );
        for k in [k, other] {
            std::fs::remove_dir_all(&k.dir).unwrap();
        }
    }

    #[test]
    fn identities_round_trip_through_the_state_file() {
        let dir = std::env::temp_dir().join(format!("masker-identities-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("identities.json");
        assert!(load_identities(&path).unwrap().is_empty());
        let mut ids = Identities::new();
        ids.insert(
            CgroupId(7),
            Identity { expires_at: Some(NOW), issuer: Some("https://ci.example".into()), ..Identity::named("ci") },
        );
        ids.insert(CgroupId(8), Identity::named("plain"));
        save_identities(&path, &ids).unwrap();
        assert_eq!(load_identities(&path).unwrap(), ids);
        let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&path).unwrap().permissions());
        assert_eq!(mode & 0o777, 0o600);
        std::fs::write(&path, b"{not json").unwrap();
        assert!(load_identities(&path).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
