//! The registrar: agent softphones REGISTER here, with digest auth.
//!
//! Room: the seat-side front desk. It answers REGISTER (RFC 3261 §10.3) and
//! authenticates agent INVITEs, using the accounts and bindings in
//! [`Store`] and the [`Authenticator`]. It also keeps the failure counts
//! that turn password guessing from 401 into 403 with a doubling back-off:
//! per account at one source (a phone with a wrong password locks only
//! itself, not the colleagues behind the same NAT), and per source once
//! several account names fail there (svwar, svcrack moving between names).
//! It is called synchronously by the SIP workers and holds no lock across an
//! await (it has none).

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

use crate::config::SipSettings;
use crate::sip::auth::{Authenticator, Credentials, DigestResponse, Verdict};
use crate::sip::dialog::contact_uri;
use crate::sip::message::Request;
use crate::sip::Peer;
use crate::store::{Binding, Store};

/// What the registrar wants sent back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// Status code.
    pub status: u16,
    /// Extra headers (WWW-Authenticate, Contact, Min-Expires...).
    pub headers: Vec<(&'static str, String)>,
    /// A REGISTER that took the agent from no live contact to one (the
    /// moment an `auto_login` account logs in).
    pub came_online: bool,
}

impl Answer {
    /// A status with nothing else.
    pub fn plain(status: u16) -> Answer {
        Answer {
            status,
            headers: Vec::new(),
            came_online: false,
        }
    }
}

/// The outcome of authenticating a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthOutcome {
    /// Authenticated as this agent.
    Agent(String),
    /// Send this answer (a challenge or a refusal).
    Refuse(Answer),
}

#[derive(Debug, Default)]
struct Failures {
    count: u32,
    window_start: u64,
    blocked_until: u64,
    /// Next block length, doubling while the failures go on.
    next_block: u64,
}

impl Failures {
    fn blocked(&self, now: u64) -> bool {
        self.blocked_until > now
    }

    /// Counts one failure in the window that ends `window` seconds after
    /// its first. Returns whether it was the first of its window, and the
    /// block (seconds) it started when it reached `limit`.
    fn strike(
        &mut self,
        now: u64,
        window: u64,
        limit: u32,
        first_block: u64,
    ) -> (bool, Option<u64>) {
        let first = self.count == 0 || now.saturating_sub(self.window_start) > window;
        if first {
            self.window_start = now;
            self.count = 0;
        }
        self.count += 1;
        if self.count < limit {
            return (first, None);
        }
        let block = self.next_block.max(first_block);
        self.blocked_until = now + block;
        self.next_block = (block * 2).min(86_400);
        self.count = 0;
        (first, Some(block))
    }
}

/// A failure table's key for an account name: names are attacker-chosen,
/// so at most 64 characters of them are kept.
fn account_key(user: &str) -> String {
    user.chars().take(64).collect()
}

/// Where calls for a new binding are sent. Behind NAT (the top Via's
/// sent-by is not where the packet came from) that is the source address,
/// the only one known to reach the phone. Otherwise the Contact is honoured
/// when it names an IP address and port; a host name is never resolved.
fn delivery_address(req: &Request, peer: &Peer, contact: &str) -> std::net::SocketAddr {
    let sent_by = &req.core.top_via().sent_by;
    let via_matches = sent_by.parse::<std::net::SocketAddr>().ok() == Some(peer.addr)
        || (peer.addr.port() == 5060 && sent_by.parse::<IpAddr>().ok() == Some(peer.addr.ip()));
    if !via_matches || peer.reliable() {
        return peer.addr;
    }
    let host_port = contact
        .split_once(':')
        .map_or(contact, |(_, rest)| rest)
        .rsplit('@')
        .next()
        .unwrap_or_default()
        .split(';')
        .next()
        .unwrap_or_default();
    host_port
        .parse::<std::net::SocketAddr>()
        .or_else(|_| {
            host_port
                .parse::<IpAddr>()
                .map(|ip| std::net::SocketAddr::new(ip, 5060))
        })
        .unwrap_or(peer.addr)
}

/// Registrar state.
#[derive(Debug)]
pub struct Registrar {
    store: Store,
    auth: Authenticator,
    settings: SipSettings,
    /// Per source: its count is of account names that failed there.
    failures: HashMap<IpAddr, Failures>,
    /// Per account name at one source: wrong answers for it from there.
    pair_failures: HashMap<(IpAddr, String), Failures>,
    /// Failed answers per account name tried, in the current window: watched
    /// and reported, never used to lock the account (an attacker could
    /// otherwise lock real agents out).
    account_failures: HashMap<String, Failures>,
    /// Sources blocked since start.
    blocks: u64,
    /// Accounts blocked at one source since start.
    pair_blocks: u64,
    /// Every account's credentials, as of an accounts generation (see
    /// [`Registrar::load_directory`]).
    directory: (u64, HashMap<String, Credentials>),
}

const MAX_TRACKED_SOURCES: usize = 100_000;

impl Registrar {
    /// A registrar over `store`.
    pub fn new(store: Store, settings: SipSettings) -> Registrar {
        Registrar {
            auth: Authenticator::new(
                &settings.domain,
                Duration::from_secs(settings.nonce_lifetime),
                &settings.digest_algorithms,
            ),
            store,
            settings,
            failures: HashMap::new(),
            pair_failures: HashMap::new(),
            account_failures: HashMap::new(),
            blocks: 0,
            pair_blocks: 0,
            directory: (u64::MAX, HashMap::new()),
        }
    }

    /// Reloads the accounts' credentials when an account changed. Checking
    /// a password is then a map lookup whether the account exists or not:
    /// a database read and decode for real accounts only took measurably
    /// longer (about 2.4 µs of 11, `cargo bench --bench sip_path --
    /// registrar`), and timing would have told real accounts from made-up
    /// ones.
    fn load_directory(&mut self) {
        let generation = self.store.accounts_generation();
        if self.directory.0 == generation {
            return;
        }
        match self.store.agents() {
            Ok(agents) => {
                let map = agents.into_iter().map(|a| (a.id, a.credentials)).collect();
                self.directory = (generation, map);
            }
            // Kept as it was; tried again on the next request.
            Err(e) => tracing::error!(error = %e, "accounts could not be read"),
        }
    }

    /// Authentication figures for `yihaotong status`: sources and accounts
    /// at a source blocked now and since start, and the accounts with the
    /// most failures in the current window.
    pub fn auth_figures(&self, now: u64) -> serde_json::Value {
        let blocked_now = self.failures.values().filter(|f| f.blocked(now)).count();
        let mut accounts_blocked: Vec<serde_json::Value> = self
            .pair_failures
            .iter()
            .filter(|(_, f)| f.blocked(now))
            .map(|((ip, account), f)| {
                serde_json::json!({ "account": account, "source": ip.to_string(), "seconds_left": f.blocked_until - now })
            })
            .collect();
        accounts_blocked.truncate(10);
        let mut accounts: Vec<(&String, u32)> = self
            .account_failures
            .iter()
            .filter(|(_, f)| now.saturating_sub(f.window_start) <= self.settings.auth_fail_window)
            .map(|(a, f)| (a, f.count))
            .collect();
        accounts.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        accounts.truncate(10);
        serde_json::json!({
            "sources_blocked_now": blocked_now,
            "source_blocks_since_start": self.blocks,
            "accounts_blocked_now": accounts_blocked,
            "account_blocks_since_start": self.pair_blocks,
            "failures_by_account": accounts
                .into_iter()
                .map(|(a, n)| serde_json::json!({ "account": a, "failures": n }))
                .collect::<Vec<_>>(),
        })
    }

    /// Counts a failure against the account name tried (bounded table; names
    /// are attacker-chosen). Warns once per window when it passes the limit.
    fn record_account_failure(&mut self, now: u64, user: &str, source: IpAddr) {
        let s = &self.settings;
        if self.account_failures.len() >= MAX_TRACKED_SOURCES
            && !self.account_failures.contains_key(user)
        {
            let window = s.auth_fail_window;
            self.account_failures
                .retain(|_, f| now.saturating_sub(f.window_start) <= window);
            if self.account_failures.len() >= MAX_TRACKED_SOURCES {
                return;
            }
        }
        let f = self.account_failures.entry(account_key(user)).or_default();
        if now.saturating_sub(f.window_start) > s.auth_fail_window {
            f.window_start = now;
            f.count = 0;
        }
        f.count += 1;
        if f.count == s.auth_fail_limit * 2 {
            tracing::warn!(account = user, %source, failures = f.count, window = s.auth_fail_window, "account under password guessing (it stays open; sources are blocked one by one)");
        }
    }

    fn source_blocked(&self, ip: IpAddr, now: u64) -> bool {
        self.failures.get(&ip).is_some_and(|f| f.blocked(now))
    }

    fn account_blocked(&self, ip: IpAddr, user: &str, now: u64) -> bool {
        self.pair_failures
            .get(&(ip, account_key(user)))
            .is_some_and(|f| f.blocked(now))
    }

    /// Counts a wrong answer for `user` from `ip`; true when that account
    /// (at that source) or the whole source is now blocked.
    fn record_failure(&mut self, ip: IpAddr, now: u64, user: &str) -> bool {
        let s = &self.settings;
        let (window, first_block) = (s.auth_fail_window, s.auth_block);
        if self.pair_failures.len() >= MAX_TRACKED_SOURCES {
            self.pair_failures
                .retain(|_, f| f.blocked(now) || now.saturating_sub(f.window_start) <= window);
            if self.pair_failures.len() >= MAX_TRACKED_SOURCES {
                // Still full of live entries: count against the source alone.
                self.pair_failures.clear();
            }
        }
        let pair = self
            .pair_failures
            .entry((ip, account_key(user)))
            .or_default();
        let (new_name, pair_block) = pair.strike(now, window, s.auth_fail_limit, first_block);
        if let Some(seconds) = pair_block {
            self.pair_blocks += 1;
            tracing::warn!(source = %ip, account = user, seconds, "blocking account at this source after repeated authentication failures (other accounts there still register)");
        }
        // The source counts account names, not answers: one phone with a
        // wrong password is one name however often it retries.
        if !new_name {
            return pair_block.is_some();
        }
        if self.failures.len() >= MAX_TRACKED_SOURCES && !self.failures.contains_key(&ip) {
            self.failures
                .retain(|_, f| f.blocked(now) || now.saturating_sub(f.window_start) <= window);
        }
        let source = self.failures.entry(ip).or_default();
        let (_, source_block) = source.strike(now, window, s.auth_fail_accounts, first_block);
        if let Some(seconds) = source_block {
            self.blocks += 1;
            tracing::warn!(source = %ip, account = user, seconds, accounts = s.auth_fail_accounts, "blocking source after authentication failures for several accounts");
        }
        pair_block.is_some() || source_block.is_some()
    }

    fn challenge(&self, now: u64, stale: bool, header: &'static str) -> Answer {
        let status = if header == "WWW-Authenticate" {
            401
        } else {
            407
        };
        Answer {
            came_online: false,
            status,
            headers: self
                .auth
                .challenges(now, stale)
                .into_iter()
                .map(|c| (header, c))
                .collect(),
        }
    }

    /// Authenticates `req` (REGISTER uses 401/Authorization, INVITE
    /// 407/Proxy-Authorization). Unknown accounts are treated exactly like
    /// wrong passwords.
    pub fn authenticate(&mut self, now: u64, req: &Request, peer: &Peer) -> AuthOutcome {
        let ip = peer.addr.ip();
        if self.source_blocked(ip, now) {
            return AuthOutcome::Refuse(Answer::plain(403));
        }
        let (cred_header, challenge_header) = if req.method == crate::sip::message::Method::Register
        {
            ("authorization", "WWW-Authenticate")
        } else {
            ("proxy-authorization", "Proxy-Authenticate")
        };
        let Some(value) = req.headers.get(cred_header) else {
            return AuthOutcome::Refuse(self.challenge(now, false, challenge_header));
        };
        // A scheme we do not know (or broken credentials): challenge again.
        let Some(digest) = DigestResponse::parse(value) else {
            return AuthOutcome::Refuse(self.challenge(now, false, challenge_header));
        };
        if self.account_blocked(ip, &digest.username, now) {
            return AuthOutcome::Refuse(Answer::plain(403));
        }
        self.load_directory();
        let verdict = self.auth.verify(
            now,
            req.method.as_str(),
            &digest,
            self.directory.1.get(&digest.username),
        );
        match verdict {
            Verdict::Ok => AuthOutcome::Agent(digest.username),
            Verdict::Stale => AuthOutcome::Refuse(self.challenge(now, true, challenge_header)),
            Verdict::Denied => {
                tracing::info!(source = %peer.addr, account = %digest.username, "authentication failed");
                self.record_account_failure(now, &digest.username, ip);
                if self.record_failure(ip, now, &digest.username) {
                    AuthOutcome::Refuse(Answer::plain(403))
                } else {
                    AuthOutcome::Refuse(self.challenge(now, false, challenge_header))
                }
            }
        }
    }

    /// Handles a REGISTER at `now` (Unix seconds).
    pub fn register(&mut self, now: u64, req: &Request, peer: &Peer) -> Answer {
        let agent = match self.authenticate(now, req, peer) {
            AuthOutcome::Agent(id) => id,
            AuthOutcome::Refuse(answer) => return answer,
        };
        // The address-of-record is the To user; an agent registers only itself.
        if req.core.to.user.as_deref() != Some(agent.as_str()) {
            return Answer::plain(403);
        }
        match self.update_bindings(now, &agent, req, peer) {
            Ok(answer) => answer,
            Err(e) => {
                tracing::error!(error = %e, agent, "registration store failed");
                Answer::plain(500)
            }
        }
    }

    fn update_bindings(
        &mut self,
        now: u64,
        agent: &str,
        req: &Request,
        peer: &Peer,
    ) -> anyhow::Result<Answer> {
        let s = &self.settings;
        let header_expires: Option<u32> = match req.headers.get("expires") {
            Some(v) => match v.parse() {
                Ok(n) => Some(n),
                Err(_) => return Ok(Answer::plain(400)),
            },
            None => None,
        };
        let mut bindings: Vec<Binding> = self
            .store
            .bindings(agent)?
            .into_iter()
            .filter(|b| b.expires_at > now)
            .collect();
        let was_online = !bindings.is_empty();
        let contacts: Vec<&str> = req.headers.get_all("contact").collect();
        if contacts.contains(&"*") {
            // RFC 3261 §10.3 step 6: `*` only alone and with Expires: 0.
            if contacts.len() != 1 || header_expires != Some(0) {
                return Ok(Answer::plain(400));
            }
            bindings.clear();
        }
        for c in contacts.iter().filter(|c| **c != "*") {
            let Some(uri) = contact_uri(c) else {
                return Ok(Answer::plain(400));
            };
            let param_expires = c
                .rsplit_once('>')
                .map_or(*c, |(_, params)| params)
                .split(';')
                .find_map(|p| p.trim().strip_prefix("expires="))
                .map(|v| v.trim().parse::<u32>());
            let expires = match param_expires {
                Some(Ok(n)) => n,
                Some(Err(_)) => return Ok(Answer::plain(400)),
                None => header_expires.unwrap_or(s.default_expires),
            };
            if expires != 0 && expires < s.min_expires {
                return Ok(Answer {
                    status: 423,
                    headers: vec![("Min-Expires", s.min_expires.to_string())],
                    came_online: false,
                });
            }
            let existing = bindings.iter().position(|b| b.contact == uri);
            if let Some(i) = existing {
                let b = &bindings[i];
                if b.call_id == req.core.call_id && b.cseq >= req.core.cseq {
                    // Out of order (§10.3 step 7).
                    return Ok(Answer::plain(500));
                }
                bindings.remove(i);
            }
            if expires > 0 {
                let received = delivery_address(req, peer, &uri);
                bindings.push(Binding {
                    contact: uri,
                    received,
                    transport: peer.transport.via_token().to_string(),
                    conn: peer.conn,
                    expires_at: now + expires.min(s.max_expires) as u64,
                    call_id: req.core.call_id.clone(),
                    cseq: req.core.cseq,
                });
            }
        }
        while bindings.len() > s.max_contacts {
            bindings.remove(0);
        }
        self.store.put_bindings(agent, &bindings)?;
        if !contacts.is_empty() {
            tracing::info!(agent, contacts = bindings.len(), source = %peer.addr, "registration updated");
        }
        let headers = bindings
            .iter()
            .map(|b| {
                (
                    "Contact",
                    format!(
                        "<{}>;expires={}",
                        b.contact,
                        b.expires_at.saturating_sub(now)
                    ),
                )
            })
            .collect();
        Ok(Answer {
            status: 200,
            headers,
            came_online: !was_online && !bindings.is_empty(),
        })
    }
}
