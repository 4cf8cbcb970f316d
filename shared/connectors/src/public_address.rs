//! Which addresses crmbridge calls when a user chooses the URL (a generic
//! `http.request` step, an alert destination): public ones only, outside
//! test mode. Otherwise anyone who may save an automation could make
//! crmbridge read its own network: the cloud's metadata service
//! (`169.254.169.254`), a database on a private subnet, an admin port on
//! loopback.
//!
//! A check of the URL's text is not enough: a public-looking name can
//! resolve to `10.0.0.5`, and a public server can answer with a redirect to
//! `http://127.0.0.1/`. So the guard sits where the connection is made:
//! [`PublicOnlyResolver`] drops every non-public address a name resolves to
//! (and fails when none is left), IP literals are checked before the
//! request leaves, and every redirect target is checked the same way
//! before it is followed.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Why a request was not sent: the address it would reach is not public.
/// Never transient: no retry makes a private address public.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct NonPublicAddress(pub String);

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_private()
        || ip.is_loopback()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        // "This network", 0.0.0.0/8.
        || a == 0
        // Carrier-grade NAT, 100.64.0.0/10.
        || (a == 100 && (b & 0xc0) == 64)
        // IETF protocol assignments, 192.0.0.0/24.
        || (a == 192 && b == 0 && c == 0)
        // Benchmarking, 198.18.0.0/15.
        || (a == 198 && (b & 0xfe) == 18)
        // Reserved, 240.0.0.0/4.
        || a >= 240)
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_public_v4(v4);
    }
    let first = ip.segments()[0];
    !(ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || ip.is_unique_local()
        || ip.is_unicast_link_local()
        // NAT64 (64:ff9b::/96) reaches whatever IPv4 address it embeds.
        || (first == 0x64 && ip.segments()[1] == 0xff9b)
        // Documentation, 2001:db8::/32; Teredo, 2001::/32 (tunnels to
        // whatever IPv4 address it embeds).
        || (first == 0x2001 && (ip.segments()[1] == 0x0db8 || ip.segments()[1] == 0))
        // 6to4, 2002::/16: an IPv4 address behind a relay.
        || first == 0x2002
        // Site-local (deprecated, still routed inward by some), fec0::/10.
        || (first & 0xffc0) == 0xfec0
        // Discard-only, 100::/64.
        || (first == 0x0100 && ip.segments()[1..4] == [0, 0, 0])
        // IPv4-compatible and other ::/8 forms.
        || first == 0)
}

/// Whether crmbridge may call this address on a user's say-so.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(ip) => is_public_v4(ip),
        IpAddr::V6(ip) => is_public_v6(ip),
    }
}

/// Checks what can be told from a URL's text: an HTTP(S) scheme (`https`
/// only outside test mode), no credentials in it, and a host that is
/// neither a non-public IP literal nor a local name. A name that passes is
/// checked again when it is resolved ([`PublicOnlyResolver`]).
pub fn check_url(url: &url::Url, allow_any: bool) -> Result<(), NonPublicAddress> {
    let refuse = |message: String| Err(NonPublicAddress(message));
    match url.scheme() {
        "https" => {}
        "http" if allow_any => {}
        "http" => return refuse("must be an https:// URL".into()),
        other => return refuse(format!("scheme {other} is not HTTP")),
    }
    if !url.username().is_empty() || url.password().is_some() {
        return refuse("must not carry credentials (user:password@)".into());
    }
    if allow_any {
        return Ok(());
    }
    match url.host() {
        Some(url::Host::Domain(domain)) => {
            let domain = domain.trim_end_matches('.').to_ascii_lowercase();
            if domain == "localhost" || domain.ends_with(".localhost") || !domain.contains('.') {
                return refuse(format!("host {domain} is not a public host"));
            }
            Ok(())
        }
        Some(url::Host::Ipv4(ip)) if !is_public_v4(ip) => {
            refuse(format!("{ip} is not a public address"))
        }
        Some(url::Host::Ipv6(ip)) if !is_public_v6(ip) => {
            refuse(format!("{ip} is not a public address"))
        }
        Some(_) => Ok(()),
        None => refuse("has no host".into()),
    }
}

/// The public addresses among those a name resolved to, or why there are
/// none.
pub fn public_only(
    name: &str,
    addresses: impl IntoIterator<Item = SocketAddr>,
) -> Result<Vec<SocketAddr>, NonPublicAddress> {
    let mut refused = Vec::new();
    let mut kept = Vec::new();
    for address in addresses {
        if is_public(address.ip()) {
            kept.push(address);
        } else {
            refused.push(address.ip().to_string());
        }
    }
    if kept.is_empty() {
        return Err(NonPublicAddress(if refused.is_empty() {
            format!("{name} did not resolve to any address")
        } else {
            format!(
                "{name} resolves only to non-public addresses ({})",
                refused.join(", ")
            )
        }));
    }
    Ok(kept)
}

/// A resolver that never hands a non-public address to the connector.
#[derive(Debug, Clone, Copy, Default)]
pub struct PublicOnlyResolver;

impl reqwest::dns::Resolve for PublicOnlyResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let resolved = tokio::net::lookup_host((host.as_str(), 0)).await?;
            let kept = public_only(&host, resolved)?;
            let addresses: reqwest::dns::Addrs = Box::new(kept.into_iter());
            Ok(addresses)
        })
    }
}

/// Whether a transport error was this guard refusing an address (so the
/// request was never sent, and retrying is pointless).
pub fn refused_by_guard(err: &(dyn std::error::Error + 'static)) -> Option<NonPublicAddress> {
    let mut current = Some(err);
    while let Some(err) = current {
        if let Some(refused) = err.downcast_ref::<NonPublicAddress>() {
            return Some(refused.clone());
        }
        current = err.source();
    }
    None
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn url(text: &str) -> url::Url {
        url::Url::parse(text).unwrap()
    }

    #[test]
    fn private_loopback_link_local_and_metadata_addresses_are_not_public() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "0.1.2.3",
            "255.255.255.255",
            "224.0.0.1",
            "198.18.0.1",
            "192.0.0.170",
            "240.0.0.1",
            "::1",
            "::",
            "fd00:ec2::254",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a00:1",
            "::127.0.0.1",
            "2002:7f00:1::1",
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
            "fec0::1",
            "100::1",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip} passed");
        }
        for ip in [
            "93.184.216.34",
            "1.1.1.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            assert!(is_public(ip.parse().unwrap()), "{ip} refused");
        }
    }

    #[test]
    fn urls_are_checked_for_scheme_credentials_and_literal_hosts() {
        assert!(check_url(&url("https://hooks.example.com/x"), false).is_ok());
        assert!(check_url(&url("https://93.184.216.34/x"), false).is_ok());
        for bad in [
            "http://hooks.example.com/x",
            "ftp://hooks.example.com/x",
            "https://user:pw@hooks.example.com/x",
            "https://localhost/x",
            "https://api.localhost/x",
            "https://LOCALHOST./x",
            "https://intranet/x",
            "https://127.0.0.1/x",
            "https://[::1]/x",
            "https://169.254.169.254/latest/meta-data",
            "https://[::ffff:10.0.0.1]/x",
            // Other spellings of 127.0.0.1 are parsed to the same address.
            "https://2130706433/x",
            "https://0x7f.1/x",
        ] {
            assert!(check_url(&url(bad), false).is_err(), "{bad} passed");
        }
        // Test mode lets fakes on loopback be reached, over plain HTTP too.
        assert!(check_url(&url("http://127.0.0.1:4000/x"), true).is_ok());
        assert!(check_url(&url("ftp://127.0.0.1/x"), true).is_err());
        assert!(check_url(&url("http://u:p@127.0.0.1/x"), true).is_err());
    }

    #[test]
    fn a_name_is_kept_only_with_its_public_addresses() {
        let addr = |text: &str| text.parse::<SocketAddr>().unwrap();
        let kept = public_only(
            "mixed.example",
            [addr("10.0.0.1:0"), addr("93.184.216.34:0")],
        )
        .unwrap();
        assert_eq!(kept, vec![addr("93.184.216.34:0")]);
        let refused = public_only("inward.example", [addr("10.0.0.1:0"), addr("[::1]:0")])
            .unwrap_err()
            .0;
        assert!(refused.contains("inward.example") && refused.contains("10.0.0.1"));
        assert!(public_only("empty.example", []).is_err());
    }

    #[tokio::test]
    async fn the_resolver_refuses_a_name_that_resolves_inward() {
        use reqwest::dns::Resolve as _;
        let name: reqwest::dns::Name = "localhost".parse().unwrap();
        let err = match PublicOnlyResolver.resolve(name).await {
            Ok(addrs) => panic!("resolved to {:?}", addrs.collect::<Vec<_>>()),
            Err(err) => err,
        };
        let refused = refused_by_guard(err.as_ref()).unwrap();
        assert!(refused.0.contains("non-public"), "{refused}");
    }
}
