//! Which address a request comes from: the peer's, unless the peer is a proxy listed in
//! `--trusted-proxies`, in which case the address that proxy saw, from `X-Forwarded-For`.
//!
//! Anyone can send `X-Forwarded-For`, so it is read only from trusted peers, and from the right:
//! each proxy appends the address it saw, so the rightmost entry that is not itself a trusted
//! proxy is the client as far as anyone trustworthy knows.

use std::net::IpAddr;
use std::str::FromStr;

use axum::http::HeaderMap;
use ipnet::IpNet;

/// Addresses and networks (`10.0.0.5`, `10.0.0.0/8`, `::1`) whose `X-Forwarded-For` is read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpNet>);

impl std::fmt::Display for TrustedProxies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let nets: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        f.write_str(&nets.join(","))
    }
}

impl FromStr for TrustedProxies {
    type Err = String;

    /// A comma-separated list; empty for none.
    fn from_str(s: &str) -> Result<Self, String> {
        s.split(',')
            .map(str::trim)
            .filter(|part| !part.is_empty())
            .map(|part| {
                part.parse::<IpNet>()
                    .or_else(|_| part.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| {
                        format!("{part:?} is not an address or network (e.g. 10.0.0.5, 10.0.0.0/8)")
                    })
            })
            .collect::<Result<_, _>>()
            .map(TrustedProxies)
    }
}

impl TrustedProxies {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn trusts(&self, addr: IpAddr) -> bool {
        let addr = addr.to_canonical();
        self.0.iter().any(|net| net.contains(&addr))
    }

    /// The address a request from `peer` with `headers` counts as.
    pub fn client_addr(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        if !self.trusts(peer) {
            return peer;
        }
        let mut client = peer;
        let hops = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .collect::<Vec<_>>();
        for hop in hops.into_iter().rev() {
            match hop.trim().parse::<IpAddr>() {
                Ok(addr) => {
                    client = addr;
                    if !self.trusts(addr) {
                        break;
                    }
                }
                // A malformed entry: what lies left of it cannot be trusted either.
                Err(_) => break,
            }
        }
        client
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(xff: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in xff {
            h.append("x-forwarded-for", v.parse().unwrap());
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn forwarded_for_is_read_only_from_trusted_peers_and_from_the_right() {
        let trusted: TrustedProxies = "10.0.0.0/8, 192.168.1.1".parse().unwrap();
        let spoofed = headers(&["6.6.6.6"]);
        assert_eq!(trusted.client_addr(ip("8.8.8.8"), &spoofed), ip("8.8.8.8"));
        assert_eq!(
            trusted.client_addr(ip("10.1.2.3"), &headers(&["6.6.6.6, 1.2.3.4, 10.0.0.9"])),
            ip("1.2.3.4"),
            "the rightmost untrusted hop"
        );
        assert_eq!(
            trusted.client_addr(ip("192.168.1.1"), &headers(&["1.1.1.1", "2.2.2.2"])),
            ip("2.2.2.2")
        );
        assert_eq!(
            trusted.client_addr(ip("10.1.2.3"), &headers(&["junk"])),
            ip("10.1.2.3")
        );
        assert_eq!(
            trusted.client_addr(ip("10.1.2.3"), &HeaderMap::new()),
            ip("10.1.2.3")
        );
        assert!("".parse::<TrustedProxies>().unwrap().is_empty());
        assert!("10.0.0.0/33".parse::<TrustedProxies>().is_err());
        assert!("localhost".parse::<TrustedProxies>().is_err());
    }
}
