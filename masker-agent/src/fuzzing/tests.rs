//! The committed seed corpus (`fuzz/seeds/<target>/`) replayed through the
//! entry points on stable Rust: every input a target was once seeded with
//! or crashed on stays a test.

use std::path::PathBuf;

fn seeds(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds").join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no seeds in {}", dir.display());
    files.into_iter().map(|p| (p.clone(), std::fs::read(&p).unwrap())).collect()
}

fn replay(target: &str, run: fn(&[u8])) {
    for (path, data) in seeds(target) {
        let outcome = std::panic::catch_unwind(|| run(&data));
        assert!(outcome.is_ok(), "{target} seed {} fails", path.display());
    }
}

#[test]
fn startup_seeds() {
    replay("startup", super::startup);
}

#[test]
fn frontend_seeds() {
    replay("frontend", super::frontend);
}

#[test]
fn backend_seeds() {
    replay("backend", super::backend);
}

#[test]
fn cell_seeds() {
    replay("cell", super::cell);
}

#[test]
fn copy_seeds() {
    replay("copy", super::copy);
}

#[test]
fn policy_seeds() {
    replay("policy", super::policy);
}

#[test]
fn agent_config_seeds() {
    replay("agent_config", super::agent_config);
}

#[test]
fn sql_seeds() {
    replay("sql", super::sql);
}

#[test]
fn plpgsql_seeds() {
    replay("plpgsql", super::plpgsql);
}

#[test]
fn definition_seeds() {
    replay("definition", super::definition);
}

#[test]
fn token_seeds() {
    replay("token", super::token);
}

/// The harness itself: a signed token with good claims is accepted (so the
/// token target reaches the checks after the signature).
#[test]
fn a_token_signed_with_the_fuzzing_key_verifies() {
    let claims = r#"{"iss":"https://issuer.fuzz","aud":"masker","exp":1800000000,"sub":"x"}"#;
    let token = super::harness::sign(r#"{"alg":"ES256","kid":"fuzz"}"#, claims).unwrap();
    let identity = super::harness::verify_token(&token, super::harness::JWKS, 1_700_000_000).unwrap();
    assert_eq!(identity.expires_at, Some(1_800_000_000));
    assert!(super::harness::verify_token(&token, super::harness::JWKS, 1_800_000_000).is_none());
}
