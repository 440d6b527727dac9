//! Who the client is when requests pass through proxies (`--trusted-proxies`).
//!
//! Forwarding headers are believed only from a peer in the trusted list; by default the
//! list is empty and the client is the TCP peer. From a trusted peer, the chain of
//! addresses (`Forwarded: for=` or `X-Forwarded-For`) is walked from the right,
//! skipping trusted proxies: the first untrusted hop is the client (a client can put
//! anything on the left of the chain, so nothing left of that hop counts). A proxy
//! usually maintains one of the two headers and passes the other on as the client sent
//! it; when both arrive they must name the same client, else the client is unknown
//! (policies that require `context.sourceIp` refuse). The
//! scheme and host the client used (`Forwarded: proto=`/`host=`, else
//! `X-Forwarded-Proto`/`-Host`) are believed from a trusted peer too; they build the
//! token realm when no public URL is configured.

use std::net::IpAddr;

use http::HeaderMap;
use ipnet::IpNet;

/// The trusted proxies: addresses and CIDR ranges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpNet>);

#[derive(Debug, thiserror::Error)]
#[error("invalid trusted proxy `{0}`: expected an address or a CIDR range (10.0.0.0/8, ::1)")]
pub struct InvalidProxy(pub String);

/// Where a request comes from, as far as the trusted proxies say.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Origin {
    /// `None` when a trusted proxy names the client in a form that is no address
    /// (`unknown`, an obfuscated identifier).
    pub client: Option<IpAddr>,
    /// `http` or `https` as the client used it, from a trusted proxy.
    pub proto: Option<&'static str>,
    /// The `Host` the client used, from a trusted proxy.
    pub host: Option<String>,
}

impl TrustedProxies {
    /// Each entry an address (`10.0.0.1`, `::1`) or a range (`10.0.0.0/8`); empty
    /// entries (an empty environment variable) are none.
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<TrustedProxies, InvalidProxy> {
        entries
            .iter()
            .map(|entry| entry.as_ref().trim())
            .filter(|entry| !entry.is_empty())
            .map(|entry| {
                entry
                    .parse::<IpNet>()
                    .or_else(|_| entry.parse::<IpAddr>().map(IpNet::from))
                    .map(|net| net.trunc())
                    .map_err(|_| InvalidProxy(entry.to_owned()))
            })
            .collect::<Result<_, _>>()
            .map(TrustedProxies)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn trusts(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.0.iter().any(|net| net.contains(&ip))
    }

    /// The origin of a request from `peer` with `headers`.
    pub fn origin(&self, peer: Option<IpAddr>, headers: &HeaderMap) -> Origin {
        let peer = peer.map(canonical);
        let Some(peer) = peer.filter(|ip| self.trusts(*ip)) else {
            return Origin {
                client: peer,
                ..Origin::default()
            };
        };
        let forwarded: Vec<Hop> = header_values(headers, "forwarded")
            .iter()
            .flat_map(|v| split_unquoted(v, ','))
            .map(parse_element)
            .collect();
        let forwarded_for: Vec<Hop> = header_values(headers, "x-forwarded-for")
            .iter()
            .flat_map(|v| v.split(','))
            .map(|v| Hop {
                for_: parse_node(v),
                ..Hop::default()
            })
            .collect();
        let (client, stop) = self.walk(peer, &forwarded);
        let (client, hops, stop) = match (forwarded.is_empty(), forwarded_for.is_empty()) {
            (true, _) => {
                let (client, stop) = self.walk(peer, &forwarded_for);
                (client, &forwarded_for, stop)
            }
            (false, true) => (client, &forwarded, stop),
            // A proxy maintains one of the two; the other came from the client as it
            // was. Which is which cannot be told, so they must agree.
            (false, false) => {
                let agreed = client.filter(|ip| self.walk(peer, &forwarded_for).0 == Some(*ip));
                (agreed, &forwarded, stop)
            }
        };
        // The scheme and host of the element naming the client (what the first trusted
        // proxy saw); the X- headers' right-most values (the nearest proxy's).
        let element = stop.and_then(|i| hops.get(i));
        let proto = element
            .and_then(|h| h.proto)
            .or_else(|| last_value(headers, "x-forwarded-proto").and_then(|v| scheme(&v)));
        let host = element
            .and_then(|h| h.host.clone())
            .or_else(|| last_value(headers, "x-forwarded-host").filter(|h| is_host(h)));
        Origin {
            client,
            proto,
            host,
        }
    }

    /// Walks `hops` from the right while the current address is a trusted proxy: the
    /// client, and the index of the hop naming it.
    fn walk(&self, peer: IpAddr, hops: &[Hop]) -> (Option<IpAddr>, Option<usize>) {
        let mut client = Some(peer);
        let mut stop = None;
        for (i, hop) in hops.iter().enumerate().rev() {
            match client {
                Some(ip) if self.trusts(ip) => {
                    client = hop.for_;
                    stop = Some(i);
                }
                _ => break,
            }
        }
        (client, stop)
    }
}

/// IPv4-mapped IPv6 addresses (`::ffff:10.0.0.1`, what a dual-stack socket reports)
/// compare as the IPv4 address they carry.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// One element of a `Forwarded` header (or one `X-Forwarded-For` entry).
#[derive(Debug, Default)]
struct Hop {
    for_: Option<IpAddr>,
    proto: Option<&'static str>,
    host: Option<String>,
}

fn header_values<'a>(headers: &'a HeaderMap, name: &str) -> Vec<&'a str> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect()
}

/// The right-most comma-separated value of a header.
fn last_value(headers: &HeaderMap, name: &str) -> Option<String> {
    header_values(headers, name)
        .last()
        .and_then(|v| v.rsplit(',').next())
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

/// `text` split at `sep` outside quoted strings.
fn split_unquoted(text: &str, sep: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in text.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            c if c == sep && !quoted => {
                parts.push(&text[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

/// One `Forwarded` element: `for=…;proto=…;host=…` (RFC 7239 §4).
fn parse_element(element: &str) -> Hop {
    let mut hop = Hop::default();
    for pair in split_unquoted(element, ';') {
        let Some((name, value)) = pair.split_once('=') else {
            continue;
        };
        let value = value.trim().trim_matches('"');
        match name.trim().to_ascii_lowercase().as_str() {
            "for" => hop.for_ = parse_node(value),
            "proto" => hop.proto = scheme(value),
            "host" => hop.host = Some(value.to_owned()).filter(|h| is_host(h)),
            _ => {}
        }
    }
    hop
}

/// A node: `192.0.2.1`, `192.0.2.1:4711`, `[2001:db8::1]`, `[2001:db8::1]:4711`, or a
/// bare IPv6 address (as `X-Forwarded-For` writes it). `unknown` and obfuscated
/// identifiers are no address.
fn parse_node(node: &str) -> Option<IpAddr> {
    let node = node.trim().trim_matches('"');
    if let Ok(ip) = node.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    let host = match node.strip_prefix('[') {
        Some(rest) => rest.split_once(']')?.0,
        None => node.rsplit_once(':')?.0,
    };
    host.parse::<IpAddr>().ok().map(canonical)
}

fn scheme(value: &str) -> Option<&'static str> {
    match value.trim().to_ascii_lowercase().as_str() {
        "http" => Some("http"),
        "https" => Some("https"),
        _ => None,
    }
}

/// A plain `host[:port]` (it ends up inside the quoted realm of a challenge).
fn is_host(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 255
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.append(*name, value.parse().unwrap());
        }
        h
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn entries_are_addresses_or_ranges() {
        let t = TrustedProxies::parse(&["10.0.0.0/8", "127.0.0.2", "::1", "fd00::/8"]).unwrap();
        assert!(t.trusts("10.1.2.3".parse().unwrap()));
        assert!(t.trusts("127.0.0.2".parse().unwrap()));
        assert!(!t.trusts("127.0.0.1".parse().unwrap()));
        assert!(t.trusts("::ffff:10.0.0.9".parse().unwrap()));
        assert!(t.trusts("fd12::1".parse().unwrap()));
        assert!(TrustedProxies::parse(&["10.0.0.0/33"]).is_err());
        assert!(TrustedProxies::parse(&["proxy.internal"]).is_err());
        assert!(TrustedProxies::parse::<&str>(&[]).unwrap().is_empty());
        assert!(TrustedProxies::parse(&[""]).unwrap().is_empty());
    }

    #[test]
    fn headers_from_an_untrusted_peer_are_ignored() {
        let t = TrustedProxies::parse(&["10.0.0.0/8"]).unwrap();
        let h = headers(&[
            ("x-forwarded-for", "10.9.9.9"),
            ("forwarded", "for=10.9.9.9;proto=https;host=evil"),
            ("x-forwarded-proto", "https"),
        ]);
        assert_eq!(
            t.origin(ip("192.0.2.7"), &h),
            Origin {
                client: ip("192.0.2.7"),
                proto: None,
                host: None
            }
        );
        // Nothing is trusted by default.
        let none = TrustedProxies::default();
        assert_eq!(none.origin(ip("10.0.0.1"), &h).client, ip("10.0.0.1"));
    }

    #[test]
    fn the_chain_is_walked_from_the_right_past_trusted_proxies() {
        let t = TrustedProxies::parse(&["10.0.0.0/8"]).unwrap();
        // A forged left-most entry stays left of the real client.
        let h = headers(&[("x-forwarded-for", "10.6.6.6, 198.51.100.4, 10.0.0.3")]);
        assert_eq!(t.origin(ip("10.0.0.2"), &h).client, ip("198.51.100.4"));
        // Repeated header lines form one list, in order.
        let h = headers(&[
            ("x-forwarded-for", "203.0.113.9"),
            ("x-forwarded-for", "10.0.0.5"),
        ]);
        assert_eq!(t.origin(ip("10.0.0.2"), &h).client, ip("203.0.113.9"));
        // Every hop trusted: the left-most is the client.
        let h = headers(&[("x-forwarded-for", "10.0.0.7,10.0.0.5")]);
        assert_eq!(t.origin(ip("10.0.0.2"), &h).client, ip("10.0.0.7"));
        // A trusted peer without the header is the client itself.
        assert_eq!(
            t.origin(ip("10.0.0.2"), &HeaderMap::new()).client,
            ip("10.0.0.2")
        );
        // An entry that is no address ends the walk with no known client.
        let h = headers(&[("x-forwarded-for", "unknown")]);
        assert_eq!(t.origin(ip("10.0.0.2"), &h).client, None);
    }

    #[test]
    fn forwarded_elements_name_client_scheme_and_host() {
        let t = TrustedProxies::parse(&["10.0.0.0/8", "2001:db8::/32"]).unwrap();
        let h = headers(&[
            (
                "forwarded",
                r#"for=10.6.6.6;proto=http, for="[2001:db8:cafe::17]:4711";proto=https;host="registry.example:443""#,
            ),
            (
                "forwarded",
                "for=198.51.100.4:1234;proto=https;host=registry.example",
            ),
            // The same client in the other header.
            ("x-forwarded-for", "10.6.6.6, 198.51.100.4"),
        ]);
        // 198.51.100.4 is the first untrusted hop from the right.
        assert_eq!(
            t.origin(ip("10.0.0.2"), &h),
            Origin {
                client: ip("198.51.100.4"),
                proto: Some("https"),
                host: Some("registry.example".into()),
            }
        );
        // Both headers, disagreeing: one is the client's own, so no client is known.
        let h = headers(&[
            ("x-forwarded-for", "198.51.100.4"),
            ("forwarded", "for=127.0.0.3"),
        ]);
        assert_eq!(t.origin(ip("10.0.0.2"), &h).client, None);
        let h = headers(&[
            ("x-forwarded-for", "198.51.100.4"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "registry.example:8443"),
        ]);
        let origin = t.origin(ip("10.0.0.2"), &h);
        assert_eq!(origin.proto, Some("https"));
        assert_eq!(origin.host.as_deref(), Some("registry.example:8443"));
        // A host that could break out of the realm's quotes is dropped.
        let h = headers(&[("x-forwarded-host", "a\"b")]);
        assert_eq!(t.origin(ip("10.0.0.2"), &h).host, None);
    }
}
