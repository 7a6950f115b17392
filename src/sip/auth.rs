//! Digest authentication (RFC 2617, RFC 7616/8760 SHA-256 for SIP), sans-IO.
//!
//! Room: the SIP house's front door lock. It makes challenges and checks
//! answers against stored HA1 values; it never sees a password in plain text
//! except when an account is created ([`ha1`]). Nonces are self-validating:
//! `timestamp:hmac(secret, timestamp)`, so they need no table to be checked,
//! and expire (`stale=true` lets a phone retry without asking the user). The
//! nonce-count check keeps, per nonce, the highest `nc` seen, in a bounded
//! table, so a replayed Authorization is refused.

use std::collections::HashMap;
use std::time::Duration;

use md5::Md5;
use sha2::{Digest, Sha256};

/// Digest algorithms we offer and accept (`[sip] digest_algorithms`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Deserialize)]
pub enum Algorithm {
    /// MD5 (RFC 2617): what most phones still send.
    #[serde(rename = "MD5")]
    Md5,
    /// SHA-256 (RFC 8760).
    #[serde(rename = "SHA-256")]
    Sha256,
}

impl Algorithm {
    /// The token in challenges.
    pub fn token(self) -> &'static str {
        match self {
            Algorithm::Md5 => "MD5",
            Algorithm::Sha256 => "SHA-256",
        }
    }

    /// The algorithm an `algorithm=` token names (case-insensitive).
    pub fn from_token(token: &str) -> Option<Algorithm> {
        [Algorithm::Md5, Algorithm::Sha256]
            .into_iter()
            .find(|a| a.token().eq_ignore_ascii_case(token))
    }

    fn hash(self, data: &str) -> String {
        match self {
            Algorithm::Md5 => hex(&Md5::digest(data.as_bytes())),
            Algorithm::Sha256 => hex(&Sha256::digest(data.as_bytes())),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// HA1 = H(username:realm:password): what we store instead of the password.
pub fn ha1(alg: Algorithm, user: &str, realm: &str, password: &str) -> String {
    alg.hash(&format!("{user}:{realm}:{password}"))
}

/// The stored credentials of an account: one HA1 per algorithm.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Credentials {
    /// HA1 with MD5.
    pub ha1_md5: String,
    /// HA1 with SHA-256.
    pub ha1_sha256: String,
}

impl Credentials {
    /// Hashes a password for `user` in `realm`.
    pub fn new(user: &str, realm: &str, password: &str) -> Credentials {
        Credentials {
            ha1_md5: ha1(Algorithm::Md5, user, realm, password),
            ha1_sha256: ha1(Algorithm::Sha256, user, realm, password),
        }
    }

    fn for_alg(&self, alg: Algorithm) -> &str {
        match alg {
            Algorithm::Md5 => &self.ha1_md5,
            Algorithm::Sha256 => &self.ha1_sha256,
        }
    }
}

/// The parameters of an `Authorization` header, parsed by us: rsipstack's
/// typed header keeps `nc` in a u8, which breaks past 255 requests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DigestResponse {
    /// username
    pub username: String,
    /// realm
    pub realm: String,
    /// nonce
    pub nonce: String,
    /// uri
    pub uri: String,
    /// response
    pub response: String,
    /// algorithm (MD5 when absent)
    pub algorithm: Option<String>,
    /// qop
    pub qop: Option<String>,
    /// nc, as hex text
    pub nc: Option<String>,
    /// cnonce
    pub cnonce: Option<String>,
    /// opaque
    pub opaque: Option<String>,
}

impl DigestResponse {
    /// Parses `Digest k=v, k="v", ...`; `None` if it is not a well-formed Digest.
    pub fn parse(value: &str) -> Option<DigestResponse> {
        let rest = value.trim();
        let (scheme, params) = rest.split_once(char::is_whitespace)?;
        if !scheme.eq_ignore_ascii_case("digest") {
            return None;
        }
        let mut out = DigestResponse::default();
        for (k, v) in parse_params(params)? {
            let v = v.to_string();
            match k.to_ascii_lowercase().as_str() {
                "username" => out.username = v,
                "realm" => out.realm = v,
                "nonce" => out.nonce = v,
                "uri" => out.uri = v,
                "response" => out.response = v,
                "algorithm" => out.algorithm = Some(v),
                "qop" => out.qop = Some(v),
                "nc" => out.nc = Some(v),
                "cnonce" => out.cnonce = Some(v),
                "opaque" => out.opaque = Some(v),
                _ => {}
            }
        }
        if out.username.is_empty() || out.nonce.is_empty() || out.response.is_empty() {
            return None;
        }
        Some(out)
    }
}

fn parse_params(s: &str) -> Option<Vec<(&str, &str)>> {
    let mut out = Vec::new();
    let mut rest = s.trim();
    while !rest.is_empty() {
        let eq = rest.find('=')?;
        let key = rest[..eq].trim();
        rest = rest[eq + 1..].trim_start();
        let value;
        if let Some(stripped) = rest.strip_prefix('"') {
            let end = stripped.find('"')?;
            value = &stripped[..end];
            rest = stripped[end + 1..].trim_start();
        } else {
            let end = rest.find(',').unwrap_or(rest.len());
            value = rest[..end].trim();
            rest = &rest[end..];
        }
        out.push((key, value));
        rest = rest.trim_start();
        if let Some(r) = rest.strip_prefix(',') {
            rest = r.trim_start();
        } else if !rest.is_empty() {
            return None;
        }
        if out.len() > 32 {
            return None;
        }
    }
    Some(out)
}

/// The outcome of checking an Authorization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The response is right and the nonce fresh.
    Ok,
    /// Right password, but the nonce expired, or was made by an earlier run
    /// of the server (a restart or upgrade): challenge again with
    /// `stale=true`. Never a failure.
    Stale,
    /// Wrong password, unknown account, replayed nc, or a nonce we never made.
    Denied,
}

/// Makes and checks digest challenges for one realm.
#[derive(Debug)]
pub struct Authenticator {
    realm: String,
    /// The algorithms challenged, in order, and the only ones accepted.
    algorithms: Vec<Algorithm>,
    secret: [u8; 32],
    nonce_lifetime: Duration,
    /// Highest nc seen per nonce (bounded; cleared when full).
    nc_seen: HashMap<String, u64>,
    /// Checked against for an unknown account: HA1s of a random password,
    /// the same length as real ones, so the digest costs the same.
    decoy: Credentials,
}

const MAX_NC_TRACKED: usize = 100_000;

impl Authenticator {
    /// An authenticator with a fresh random secret that challenges with
    /// `algorithms`, in that order (MD5 when the list is empty).
    pub fn new(realm: &str, nonce_lifetime: Duration, algorithms: &[Algorithm]) -> Authenticator {
        let mut algs = Vec::new();
        for a in algorithms {
            if !algs.contains(a) {
                algs.push(*a);
            }
        }
        if algs.is_empty() {
            algs.push(Algorithm::Md5);
        }
        Authenticator {
            realm: realm.to_string(),
            algorithms: algs,
            secret: rand::random(),
            nonce_lifetime,
            nc_seen: HashMap::new(),
            decoy: Credentials::new("", realm, &format!("{:032x}", rand::random::<u128>())),
        }
    }

    /// The realm.
    pub fn realm(&self) -> &str {
        &self.realm
    }

    fn sign(&self, stamp: &str) -> String {
        let mut h = Sha256::new();
        h.update(self.secret);
        h.update(stamp.as_bytes());
        hex(&h.finalize()[..12])
    }

    /// A nonce made at `now_secs` (seconds since the Unix epoch).
    pub fn nonce(&self, now_secs: u64) -> String {
        let stamp = format!("{now_secs:x}.{:08x}", rand::random::<u32>());
        let sig = self.sign(&stamp);
        format!("{stamp}.{sig}")
    }

    /// `WWW-Authenticate` values, one per configured algorithm in the
    /// configured order (RFC 8760 §2.4: the preferred first), sharing one
    /// nonce. The default is MD5 alone: Debian's baresip 1.0 gives up on a
    /// 401 that carries any challenge it cannot answer ("Function not
    /// implemented"), and SIPp 3.6 answers only the first one.
    pub fn challenges(&self, now_secs: u64, stale: bool) -> Vec<String> {
        let nonce = self.nonce(now_secs);
        let stale = if stale { ", stale=true" } else { "" };
        self.algorithms
            .iter()
            .map(|alg| {
                format!(
                    "Digest realm=\"{}\", nonce=\"{}\", algorithm={}, qop=\"auth\"{}",
                    self.realm,
                    nonce,
                    alg.token(),
                    stale
                )
            })
            .collect()
    }

    /// Checks `resp` for a request with `method`, using `creds` (`None` for an
    /// unknown account: the same work is done so timing does not tell).
    pub fn verify(
        &mut self,
        now_secs: u64,
        method: &str,
        resp: &DigestResponse,
        creds: Option<&Credentials>,
    ) -> Verdict {
        let alg = match resp.algorithm.as_deref() {
            None => Algorithm::Md5,
            Some(a) => match Algorithm::from_token(a) {
                Some(alg) => alg,
                None => return Verdict::Denied,
            },
        };
        if !self.algorithms.contains(&alg) || resp.realm != self.realm {
            return Verdict::Denied;
        }
        // Nonce: ours (signed with this run's secret), and how old? One we
        // did not sign is checked all the same: a right answer to it comes
        // from a phone that knows the password and holds a nonce from an
        // earlier run (a restart, an upgrade), and gets a fresh one.
        let issued = resp.nonce.rsplit_once('.').and_then(|(stamp, sig)| {
            constant_eq(self.sign(stamp).as_bytes(), sig.as_bytes())
                .then(|| stamp.split('.').next())
                .flatten()
                .and_then(|s| u64::from_str_radix(s, 16).ok())
        });
        let ha1 = creds.unwrap_or(&self.decoy).for_alg(alg);
        let ha2 = alg.hash(&format!("{}:{}", method, resp.uri));
        let expected = match resp.qop.as_deref() {
            Some("auth") => {
                let (Some(nc), Some(cnonce)) = (resp.nc.as_deref(), resp.cnonce.as_deref()) else {
                    return Verdict::Denied;
                };
                alg.hash(&format!("{ha1}:{}:{nc}:{cnonce}:auth:{ha2}", resp.nonce))
            }
            None => alg.hash(&format!("{ha1}:{}:{ha2}", resp.nonce)),
            Some(_) => return Verdict::Denied,
        };
        let right = constant_eq(
            expected.as_bytes(),
            resp.response.to_ascii_lowercase().as_bytes(),
        );
        if !right || creds.is_none() {
            return Verdict::Denied;
        }
        let Some(issued) = issued else {
            return Verdict::Stale;
        };
        if now_secs.saturating_sub(issued) > self.nonce_lifetime.as_secs() {
            return Verdict::Stale;
        }
        // nc must grow for each use of a nonce (RFC 7616 §3.4.5 replay protection).
        if let Some(nc) = resp.nc.as_deref() {
            let Ok(nc) = u64::from_str_radix(nc, 16) else {
                return Verdict::Denied;
            };
            if self.nc_seen.len() >= MAX_NC_TRACKED {
                self.nc_seen.clear();
            }
            let last = self.nc_seen.entry(resp.nonce.clone()).or_insert(0);
            if nc <= *last {
                return Verdict::Denied;
            }
            *last = nc;
        }
        Verdict::Ok
    }
}

fn constant_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A client's side of digest auth (test phones and the load harness).
#[derive(Debug, Clone)]
pub struct DigestClient<'a> {
    /// Algorithm to answer with.
    pub alg: Algorithm,
    /// User name.
    pub user: &'a str,
    /// Password.
    pub password: &'a str,
    /// Realm from the challenge.
    pub realm: &'a str,
    /// Nonce from the challenge.
    pub nonce: &'a str,
    /// Client nonce.
    pub cnonce: &'a str,
}

impl DigestClient<'_> {
    /// The `Authorization` value for `method` on `uri`, the `nc`-th use of the nonce.
    pub fn authorization(&self, method: &str, uri: &str, nc: u32) -> String {
        let alg = self.alg;
        let ha1 = ha1(alg, self.user, self.realm, self.password);
        let ha2 = alg.hash(&format!("{method}:{uri}"));
        let nc = format!("{nc:08x}");
        let response = alg.hash(&format!(
            "{ha1}:{}:{nc}:{}:auth:{ha2}",
            self.nonce, self.cnonce
        ));
        format!(
            "Digest username=\"{}\", realm=\"{}\", nonce=\"{}\", uri=\"{uri}\", \
response=\"{response}\", algorithm={}, qop=auth, nc={nc}, cnonce=\"{}\"",
            self.user,
            self.realm,
            self.nonce,
            alg.token(),
            self.cnonce
        )
    }
}

/// Pulls the nonce (and realm) out of a `WWW-Authenticate` value.
pub fn challenge_params(value: &str) -> Option<(String, String, String)> {
    let (_, params) = value.trim().split_once(char::is_whitespace)?;
    let params = parse_params(params)?;
    let get = |k: &str| {
        params
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(k))
            .map(|(_, v)| v.to_string())
    };
    Some((
        get("realm")?,
        get("nonce")?,
        get("algorithm").unwrap_or_else(|| "MD5".into()),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc2617_md5_vector() {
        // RFC 2617 §3.5 example (HTTP, but the arithmetic is the same).
        let ha1 = ha1(
            Algorithm::Md5,
            "Mufasa",
            "testrealm@host.com",
            "Circle Of Life",
        );
        let ha2 = Algorithm::Md5.hash("GET:/dir/index.html");
        let r = Algorithm::Md5.hash(&format!(
            "{ha1}:dcd98b7102dd2f0e8b11d0f600bfb0c093:00000001:0a4f113b:auth:{ha2}"
        ));
        assert_eq!(r, "6629fae49393a05397450978507c4ef1");
    }

    const BOTH: [Algorithm; 2] = [Algorithm::Md5, Algorithm::Sha256];

    fn answer(auth: &Authenticator, alg: Algorithm, pw: &str, nc: u32) -> DigestResponse {
        let nonce = auth.nonce(1_000);
        let client = DigestClient {
            alg,
            user: "1001",
            password: pw,
            realm: "hotline",
            nonce: &nonce,
            cnonce: "abc",
        };
        let v = client.authorization("REGISTER", "sip:hotline", nc);
        DigestResponse::parse(&v).expect("own header parses")
    }

    #[test]
    fn right_and_wrong_passwords_both_algorithms() {
        let mut auth = Authenticator::new("hotline", Duration::from_secs(300), &BOTH);
        let creds = Credentials::new("1001", "hotline", "secret");
        for alg in [Algorithm::Md5, Algorithm::Sha256] {
            let good = answer(&auth, alg, "secret", 1);
            assert_eq!(
                auth.verify(1_010, "REGISTER", &good, Some(&creds)),
                Verdict::Ok
            );
            let bad = answer(&auth, alg, "wrong", 1);
            assert_eq!(
                auth.verify(1_010, "REGISTER", &bad, Some(&creds)),
                Verdict::Denied
            );
            let unknown = answer(&auth, alg, "secret", 1);
            assert_eq!(
                auth.verify(1_010, "REGISTER", &unknown, None),
                Verdict::Denied
            );
        }
    }

    #[test]
    fn expired_nonce_is_stale_and_replay_is_denied() {
        let mut auth = Authenticator::new("hotline", Duration::from_secs(300), &BOTH);
        let creds = Credentials::new("1001", "hotline", "secret");
        let r = answer(&auth, Algorithm::Md5, "secret", 1);
        assert_eq!(
            auth.verify(2_000, "REGISTER", &r, Some(&creds)),
            Verdict::Stale
        );
        let r = answer(&auth, Algorithm::Md5, "secret", 1);
        assert_eq!(
            auth.verify(1_001, "REGISTER", &r, Some(&creds)),
            Verdict::Ok
        );
        assert_eq!(
            auth.verify(1_002, "REGISTER", &r, Some(&creds)),
            Verdict::Denied,
            "replayed nc"
        );
    }

    #[test]
    fn a_nonce_from_an_earlier_run_is_stale_only_with_the_right_password() {
        let mut auth = Authenticator::new("hotline", Duration::from_secs(300), &BOTH);
        let earlier_run = Authenticator::new("hotline", Duration::from_secs(300), &BOTH);
        let creds = Credentials::new("1001", "hotline", "secret");
        let r = answer(&earlier_run, Algorithm::Md5, "secret", 1);
        assert_eq!(
            auth.verify(1_000, "REGISTER", &r, Some(&creds)),
            Verdict::Stale
        );
        let wrong = answer(&earlier_run, Algorithm::Md5, "wrong", 2);
        assert_eq!(
            auth.verify(1_000, "REGISTER", &wrong, Some(&creds)),
            Verdict::Denied
        );
        let unknown = answer(&earlier_run, Algorithm::Md5, "secret", 3);
        assert_eq!(
            auth.verify(1_000, "REGISTER", &unknown, None),
            Verdict::Denied
        );
        let mut garbage = answer(&auth, Algorithm::Md5, "secret", 4);
        garbage.nonce = "no-dots-at-all".into();
        assert_eq!(
            auth.verify(1_000, "REGISTER", &garbage, Some(&creds)),
            Verdict::Denied,
            "the response was made for another nonce"
        );
    }

    #[test]
    fn only_the_configured_algorithms_are_offered_and_accepted() {
        let mut md5_only = Authenticator::new("hotline", Duration::from_secs(300), &[]);
        let offered = md5_only.challenges(1_000, false);
        assert_eq!(offered.len(), 1, "{offered:?}");
        assert!(offered[0].contains("algorithm=MD5"), "{offered:?}");
        let creds = Credentials::new("1001", "hotline", "secret");
        let sha = answer(&md5_only, Algorithm::Sha256, "secret", 1);
        assert_eq!(
            md5_only.verify(1_010, "REGISTER", &sha, Some(&creds)),
            Verdict::Denied
        );
        let preferred = Authenticator::new(
            "hotline",
            Duration::from_secs(300),
            &[Algorithm::Sha256, Algorithm::Md5, Algorithm::Sha256],
        );
        let offered = preferred.challenges(1_000, true);
        assert_eq!(offered.len(), 2, "{offered:?}");
        assert!(offered[0].contains("algorithm=SHA-256"), "{offered:?}");
        assert!(offered[1].contains("algorithm=MD5, qop=\"auth\", stale=true"));
    }
}
