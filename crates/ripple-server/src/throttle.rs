//! Failed-auth throttling per client address (Hocuspocus's throttle extension, with bounded
//! memory): an address that fails auth `auth_throttle_attempts` times within
//! `auth_throttle_window_secs` is banned for `auth_throttle_ban_secs`, and a banned address
//! gets 429 before any auth work (no token verification, no webhook call).
//!
//! IPv6 addresses are counted per /64 (one host usually holds a whole /64). At most
//! `auth_throttle_max_ips` addresses are tracked; when the table is full, the one whose window
//! started longest ago is forgotten (its count, or its ban, ends early): memory stays bounded
//! and an attacker needs that many addresses to shorten a ban.
//!
//! Addresses in `auth_throttle_exempt` are never counted: by default loopback, where a reverse
//! proxy on the same host connects from. Behind a proxy every client has the proxy's address
//! (no forwarding header is trusted), so one attacker would get everyone banned: list the
//! proxy's address there (then the throttle belongs in the proxy).
//!
//! One std `Mutex` over the table: it is touched only on upgrade requests (never per message),
//! and never held across an await.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use crate::config::Config;

/// What an address is counted as: itself (IPv4), or its /64 (IPv6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Key {
    V4(u32),
    V6Prefix(u64),
}

fn key_of(ip: IpAddr) -> Key {
    match ip {
        IpAddr::V4(v4) => Key::V4(u32::from(v4)),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => Key::V4(u32::from(v4)),
            None => Key::V6Prefix((u128::from(v6) >> 64) as u64),
        },
    }
}

/// An address block (`10.0.0.0/8`, `::1`, `2001:db8::/32`): parsed from `auth_throttle_exempt`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Block {
    /// The address as 128 bits (IPv4 as IPv4-mapped IPv6) and how many leading bits count.
    bits: u128,
    prefix: u32,
}

fn bits_of(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => u128::from(v4.to_ipv6_mapped()),
            None => u128::from(v6),
        },
    }
}

fn parse_block(s: &str) -> Option<Block> {
    let (addr, prefix) = match s.trim().split_once('/') {
        Some((a, p)) => (a, Some(p.parse::<u32>().ok()?)),
        None => (s.trim(), None),
    };
    let ip: IpAddr = addr.parse().ok()?;
    let prefix = match (ip, prefix) {
        (IpAddr::V4(_), Some(p)) if p <= 32 => p + 96,
        (IpAddr::V6(_), Some(p)) if p <= 128 => p,
        (_, Some(_)) => return None,
        (_, None) => 128,
    };
    Some(Block {
        bits: bits_of(ip),
        prefix,
    })
}

impl Block {
    fn contains(&self, ip: IpAddr) -> bool {
        let mask = u128::MAX.checked_shl(128 - self.prefix).unwrap_or(0);
        (bits_of(ip) ^ self.bits) & mask == 0
    }
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    /// When the current counting window started (ms, the table's clock).
    window_start: u64,
    failures: u32,
    /// Banned until this time (ms); 0: not banned.
    banned_until: u64,
}

#[derive(Debug, Default)]
struct Table {
    entries: HashMap<Key, Entry>,
    /// (window start, key) of every entry: the oldest is evicted first.
    by_age: BTreeSet<(u64, Key)>,
}

/// The throttle of one server.
#[derive(Debug)]
pub(crate) struct AuthThrottle {
    attempts: u32,
    window_ms: u64,
    ban_ms: u64,
    max_ips: usize,
    exempt: Vec<Block>,
    table: Mutex<Table>,
}

fn ms(secs: f64) -> u64 {
    (secs.max(0.0) * 1000.0) as u64
}

impl AuthThrottle {
    pub(crate) fn new(config: &Config) -> Self {
        Self {
            attempts: config.auth_throttle_attempts,
            window_ms: ms(config.auth_throttle_window_secs),
            ban_ms: ms(config.auth_throttle_ban_secs),
            max_ips: config.auth_throttle_max_ips.max(1),
            exempt: config
                .auth_throttle_exempt
                .iter()
                .filter_map(|s| parse_block(s))
                .collect(),
            table: Mutex::new(Table::default()),
        }
    }

    /// Entries of `auth_throttle_exempt` that are not address blocks (logged at start).
    pub(crate) fn invalid_exemptions(config: &Config) -> Vec<String> {
        config
            .auth_throttle_exempt
            .iter()
            .filter(|s| parse_block(s).is_none())
            .cloned()
            .collect()
    }

    fn exempt(&self, ip: IpAddr) -> bool {
        self.exempt.iter().any(|b| b.contains(ip))
    }

    fn enabled(&self) -> bool {
        self.attempts > 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        // A panic while holding this lock leaves a table that is still consistent enough to
        // count with; refusing every upgrade forever would be worse.
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `Err(retry_after)` while `ip` is banned at `now_ms`.
    pub(crate) fn check(&self, ip: IpAddr, now_ms: u64) -> Result<(), Duration> {
        if !self.enabled() || self.exempt(ip) {
            return Ok(());
        }
        let table = self.lock();
        match table.entries.get(&key_of(ip)) {
            Some(e) if e.banned_until > now_ms => {
                Err(Duration::from_millis(e.banned_until - now_ms))
            }
            _ => Ok(()),
        }
    }

    /// Records a failed auth from `ip` at `now_ms`.
    pub(crate) fn failed(&self, ip: IpAddr, now_ms: u64) {
        if !self.enabled() || self.exempt(ip) {
            return;
        }
        let key = key_of(ip);
        let mut guard = self.lock();
        let table = &mut *guard;
        if !table.entries.contains_key(&key) {
            while table.entries.len() >= self.max_ips {
                let Some(oldest) = table.by_age.pop_first() else {
                    break;
                };
                table.entries.remove(&oldest.1);
            }
            table.by_age.insert((now_ms, key));
            table.entries.insert(
                key,
                Entry {
                    window_start: now_ms,
                    failures: 0,
                    banned_until: 0,
                },
            );
        }
        let Some(entry) = table.entries.get_mut(&key) else {
            return;
        };
        if now_ms.saturating_sub(entry.window_start) >= self.window_ms
            && entry.banned_until <= now_ms
        {
            // A new window: the old count has expired.
            table.by_age.remove(&(entry.window_start, key));
            entry.window_start = now_ms;
            entry.failures = 0;
            table.by_age.insert((now_ms, key));
        }
        entry.failures = entry.failures.saturating_add(1);
        if entry.failures >= self.attempts {
            entry.banned_until = now_ms.saturating_add(self.ban_ms);
        }
    }

    /// Addresses tracked now.
    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.lock().entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn throttle(attempts: u32, max_ips: usize) -> AuthThrottle {
        AuthThrottle::new(&Config {
            auth_throttle_attempts: attempts,
            auth_throttle_window_secs: 60.0,
            auth_throttle_ban_secs: 300.0,
            auth_throttle_max_ips: max_ips,
            auth_throttle_exempt: Vec::new(),
            ..Config::default()
        })
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn the_nth_failure_in_a_window_bans_until_the_ban_ends() {
        let t = throttle(3, 100);
        let a = ip("192.0.2.1");
        t.failed(a, 0);
        t.failed(a, 1_000);
        assert_eq!(t.check(a, 1_000), Ok(()));
        t.failed(a, 2_000);
        assert_eq!(t.check(a, 2_000), Err(Duration::from_secs(300)));
        assert_eq!(t.check(ip("192.0.2.2"), 2_000), Ok(()), "only that address");
        assert_eq!(t.check(a, 302_000), Ok(()), "the ban ends");
    }

    #[test]
    fn failures_in_an_old_window_do_not_count() {
        let t = throttle(3, 100);
        let a = ip("192.0.2.1");
        t.failed(a, 0);
        t.failed(a, 1_000);
        t.failed(a, 61_000);
        assert_eq!(t.check(a, 61_000), Ok(()));
    }

    #[test]
    fn ipv6_counts_per_64_and_the_table_is_bounded() {
        let t = throttle(2, 100);
        t.failed(ip("2001:db8::1"), 0);
        t.failed(ip("2001:db8::ffff:2"), 0);
        assert!(t.check(ip("2001:db8::3"), 0).is_err());
        assert_eq!(t.check(ip("2001:db8:0:1::1"), 0), Ok(()));

        let t = throttle(1, 10);
        for i in 0..1000u32 {
            t.failed(IpAddr::from(i.to_be_bytes()), u64::from(i));
        }
        assert_eq!(t.tracked(), 10);
        // The newest are kept.
        assert!(t.check(IpAddr::from(999u32.to_be_bytes()), 1000).is_err());
        assert_eq!(t.check(IpAddr::from(0u32.to_be_bytes()), 1000), Ok(()));
    }

    #[test]
    fn exempt_blocks_are_never_counted() {
        let t = AuthThrottle::new(&Config {
            auth_throttle_attempts: 1,
            auth_throttle_exempt: vec!["10.0.0.0/8".into(), "::1".into(), "2001:db8::/32".into()],
            ..Config::default()
        });
        for exempt in ["10.1.2.3", "::1", "2001:db8:1::5", "::ffff:10.9.9.9"] {
            t.failed(ip(exempt), 0);
            assert_eq!(t.check(ip(exempt), 0), Ok(()), "{exempt}");
        }
        t.failed(ip("11.0.0.1"), 0);
        assert!(t.check(ip("11.0.0.1"), 0).is_err());
        assert_eq!(parse_block("10.0.0.0/33"), None);
        assert_eq!(parse_block("nonsense"), None);
        assert_eq!(
            Config::default().auth_throttle_exempt,
            vec!["127.0.0.0/8".to_owned(), "::1".to_owned()]
        );
        assert!(AuthThrottle::invalid_exemptions(&Config::default()).is_empty());
    }

    #[test]
    fn zero_attempts_is_off() {
        let t = throttle(0, 10);
        for _ in 0..100 {
            t.failed(ip("192.0.2.1"), 0);
        }
        assert_eq!(t.check(ip("192.0.2.1"), 0), Ok(()));
        assert_eq!(t.tracked(), 0);
    }
}
