//! Trusted token issuers (`[[issuer]]` of the agent configuration): who
//! signs the tokens an identity may present and where their keys are.

use std::path::PathBuf;

use serde::Deserialize;

/// One trusted token issuer (agent configuration `[[issuer]]`).
///
/// Exactly one of `jwks_file` and `jwks_url` says where its keys are; the
/// TOML is checked when the configuration is read.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "RawIssuer")]
pub struct IssuerConfig {
    /// The exact `iss` claim.
    pub issuer: String,
    /// The `aud` the token must be for.
    pub audience: String,
    /// Where the issuer's keys (JWKS) come from.
    pub jwks: JwksSource,
    /// How long keys fetched from `jwks_url` are used before they are
    /// fetched again.
    pub jwks_cache_secs: u64,
    /// Fetches from `jwks_url` start at most this often (bounds refetches
    /// caused by unknown key ids).
    pub jwks_min_fetch_interval_secs: u64,
    /// Claims recorded in audit `session_start` events of identities this
    /// issuer vouches for (workload metadata only).
    pub audit_claims: Vec<String>,
}

/// Where an issuer's keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksSource {
    /// A JWKS file, read at each verification so a rotated key file takes
    /// effect without a restart.
    File(PathBuf),
    /// An `https://` URL, fetched and cached ([`super::jwks`]), with extra trust
    /// anchors (PEM) besides the system bundle.
    Url { url: String, ca_file: Option<PathBuf> },
}

/// Default [`IssuerConfig::jwks_cache_secs`]: 10 minutes.
pub const DEFAULT_JWKS_CACHE_SECS: u64 = 600;
/// Default [`IssuerConfig::jwks_min_fetch_interval_secs`].
pub const DEFAULT_JWKS_MIN_FETCH_INTERVAL_SECS: u64 = 30;
/// Default [`IssuerConfig::audit_claims`]: what a CI job's token says about
/// the job (GitHub and GitLab both set these).
pub const DEFAULT_AUDIT_CLAIMS: [&str; 3] = ["sub", "repository", "ref"];
/// Claims of the OIDC standard profile, which describe a person: refused in
/// `audit_claims` (audit events carry no personal data).
const PERSONAL_CLAIMS: [&str; 14] = [
    "email",
    "email_verified",
    "name",
    "given_name",
    "family_name",
    "middle_name",
    "nickname",
    "preferred_username",
    "profile",
    "picture",
    "phone_number",
    "phone_number_verified",
    "address",
    "birthdate",
];

/// `[[issuer]]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIssuer {
    issuer: String,
    audience: String,
    jwks_file: Option<PathBuf>,
    jwks_url: Option<String>,
    jwks_ca_file: Option<PathBuf>,
    jwks_cache_secs: Option<u64>,
    jwks_min_fetch_interval_secs: Option<u64>,
    audit_claims: Option<Vec<String>>,
}

/// An `[[issuer]]` entry that cannot be used: the issuer, and what is wrong.
#[derive(Debug, thiserror::Error)]
#[error("[[issuer]] {issuer:?}: {problem}")]
pub struct IssuerError {
    /// The entry's `issuer`.
    pub issuer: String,
    /// What is wrong with it.
    pub problem: IssuerProblem,
}

/// What is wrong with an `[[issuer]]` entry.
#[derive(Debug, thiserror::Error)]
pub enum IssuerProblem {
    #[error("set either `jwks_file` or `jwks_url`, not both")]
    BothSources,
    #[error("needs `jwks_file` (a JWKS file) or `jwks_url` (https://...)")]
    NoSource,
    #[error("`jwks_ca_file` applies only to `jwks_url`")]
    CaFileWithoutUrl,
    #[error("jwks_url {url:?}: {source}")]
    BadUrl { url: String, source: hyper::http::uri::InvalidUri },
    #[error("jwks_url {0:?} is not https://; keys are fetched over HTTPS only")]
    NotHttps(String),
    #[error("jwks_url {0:?} has no host")]
    NoHost(String),
    #[error("audit_claims: {0:?} describes a person; audit events carry workload metadata only")]
    PersonalClaim(String),
    #[error("jwks_min_fetch_interval_secs must be at least 1")]
    ZeroFetchInterval,
}

impl TryFrom<RawIssuer> for IssuerConfig {
    type Error = IssuerError;

    fn try_from(r: RawIssuer) -> Result<IssuerConfig, IssuerError> {
        let fail = |problem| Err(IssuerError { issuer: r.issuer.clone(), problem });
        let jwks = match (r.jwks_file, r.jwks_url) {
            (Some(_), Some(_)) => return fail(IssuerProblem::BothSources),
            (None, None) => return fail(IssuerProblem::NoSource),
            (Some(file), None) => {
                if r.jwks_ca_file.is_some() {
                    return fail(IssuerProblem::CaFileWithoutUrl);
                }
                JwksSource::File(file)
            }
            (None, Some(url)) => {
                let uri: hyper::Uri = match url.parse() {
                    Ok(u) => u,
                    Err(source) => return fail(IssuerProblem::BadUrl { url, source }),
                };
                if uri.scheme_str() != Some("https") {
                    return fail(IssuerProblem::NotHttps(url));
                }
                if uri.host().is_none_or(str::is_empty) {
                    return fail(IssuerProblem::NoHost(url));
                }
                JwksSource::Url { url, ca_file: r.jwks_ca_file }
            }
        };
        let audit_claims = r.audit_claims.unwrap_or_else(|| DEFAULT_AUDIT_CLAIMS.map(String::from).to_vec());
        if let Some(c) = audit_claims.iter().find(|c| PERSONAL_CLAIMS.contains(&c.as_str())) {
            return fail(IssuerProblem::PersonalClaim(c.clone()));
        }
        if r.jwks_min_fetch_interval_secs == Some(0) {
            return fail(IssuerProblem::ZeroFetchInterval);
        }
        Ok(IssuerConfig {
            issuer: r.issuer,
            audience: r.audience,
            jwks,
            jwks_cache_secs: r.jwks_cache_secs.unwrap_or(DEFAULT_JWKS_CACHE_SECS),
            jwks_min_fetch_interval_secs: r
                .jwks_min_fetch_interval_secs
                .unwrap_or(DEFAULT_JWKS_MIN_FETCH_INTERVAL_SECS),
            audit_claims,
        })
    }
}

impl IssuerConfig {
    /// The JWKS file or URL, for messages.
    pub fn jwks_location(&self) -> std::borrow::Cow<'_, str> {
        match &self.jwks {
            JwksSource::File(p) => p.to_string_lossy(),
            JwksSource::Url { url, .. } => url.as_str().into(),
        }
    }
}
