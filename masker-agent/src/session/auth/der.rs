//! Just enough DER to find a certificate's signature algorithm, for the
//! `tls-server-end-point` channel binding of an injected SCRAM login.

/// The `tls-server-end-point` channel binding data (RFC 5929) of a server
/// certificate (DER): its hash with the hash function of its signature
/// algorithm, SHA-256 for MD5 and SHA-1. `None` for a signature algorithm
/// without a defined hash here (RSA-PSS, Ed25519, ...) or a certificate
/// that does not parse: SCRAM then runs without channel binding.
pub fn tls_server_end_point(cert: &[u8]) -> Option<Vec<u8>> {
    use sha2::Digest;
    // Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm
    // AlgorithmIdentifier ::= SEQUENCE { algorithm OID, ... }, signature }
    let (0x30, body, _) = der(cert)? else { return None };
    let (0x30, _tbs, rest) = der(body)? else { return None };
    let (0x30, algorithm, _) = der(rest)? else { return None };
    let (0x06, oid, _) = der(algorithm)? else { return None };
    const RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01]; // 1.2.840.113549.1.1
    const ECDSA: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04]; // 1.2.840.10045.4
    let hash = match oid {
        [rsa @ .., n] if rsa == RSA => match n {
            4 | 5 | 11 => 256, // md5, sha1 -> sha256; sha256WithRSAEncryption
            12 => 384,
            13 => 512,
            14 => 224,
            _ => return None,
        },
        [ecdsa @ .., 1] if ecdsa == ECDSA => 256, // ecdsa-with-SHA1 -> sha256
        [ecdsa @ .., 3, n] if ecdsa == ECDSA => match n {
            1 => 224,
            2 => 256,
            3 => 384,
            4 => 512,
            _ => return None,
        },
        _ => return None,
    };
    Some(match hash {
        224 => sha2::Sha224::digest(cert).to_vec(),
        256 => sha2::Sha256::digest(cert).to_vec(),
        384 => sha2::Sha384::digest(cert).to_vec(),
        _ => sha2::Sha512::digest(cert).to_vec(),
    })
}

/// One DER element at the start of `input`: tag, contents, what follows.
fn der(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        (rest[..n].iter().fold(0usize, |acc, b| (acc << 8) | *b as usize), &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}
