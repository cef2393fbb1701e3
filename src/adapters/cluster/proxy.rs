//! Which proxy reaches the API server, decided as Go's `golang.org/x/net/http/httpproxy`
//! (what helm's client-go uses) decides it: `HTTPS_PROXY` for `https://` servers,
//! `HTTP_PROXY` for `http://` ones (upper case first, then lower case), never for
//! `localhost` or loopback addresses, and not for hosts `NO_PROXY` covers (`*`, IPs, CIDR
//! ranges, `example.com` = itself and subdomains, `.example.com`/`*.example.com` =
//! subdomains only, each optionally with `:port`). A kubeconfig `proxy-url` wins over the
//! environment and ignores `NO_PROXY`, as in client-go.

use std::net::IpAddr;

/// The proxy variables, captured once so decisions are testable.
#[derive(Clone, Debug, Default)]
pub(crate) struct ProxyEnv {
    pub(crate) http_proxy: Option<String>,
    pub(crate) https_proxy: Option<String>,
    pub(crate) no_proxy: Option<String>,
}

impl ProxyEnv {
    /// Reads `HTTP_PROXY`/`http_proxy`, `HTTPS_PROXY`/`https_proxy`, `NO_PROXY`/`no_proxy`.
    pub(crate) fn from_process() -> ProxyEnv {
        let any = |upper: &str, lower: &str| {
            [upper, lower]
                .iter()
                .filter_map(|k| std::env::var(k).ok())
                .find(|v| !v.is_empty())
        };
        ProxyEnv {
            http_proxy: any("HTTP_PROXY", "http_proxy"),
            https_proxy: any("HTTPS_PROXY", "https_proxy"),
            no_proxy: any("NO_PROXY", "no_proxy"),
        }
    }
}

/// The proxy URL for `server`, or None to connect directly.
pub(crate) fn proxy_for(server: &http::Uri, env: &ProxyEnv) -> Option<String> {
    let https = server.scheme_str() == Some("https");
    let proxy = if https {
        env.https_proxy.as_deref()
    } else {
        env.http_proxy.as_deref()
    }?;
    let host = server.host()?.trim_start_matches('[').trim_end_matches(']');
    let port = server
        .port_u16()
        .unwrap_or(if https { 443 } else { 80 })
        .to_string();
    if !use_proxy(host, &port, env.no_proxy.as_deref().unwrap_or("")) {
        return None;
    }
    // Go accepts `host:port` without a scheme and means http.
    Some(if proxy.contains("://") {
        proxy.to_string()
    } else {
        format!("http://{proxy}")
    })
}

/// httpproxy's `useProxy`: false when the target must be reached directly.
fn use_proxy(host: &str, port: &str, no_proxy: &str) -> bool {
    let host = host.trim().to_ascii_lowercase();
    if host == "localhost" {
        return false;
    }
    let ip: Option<IpAddr> = host.parse().ok();
    if ip.is_some_and(|ip| ip.is_loopback()) {
        return false;
    }
    for entry in no_proxy.split(',').map(|e| e.trim().to_ascii_lowercase()) {
        if entry.is_empty() {
            continue;
        }
        if entry == "*" {
            return false;
        }
        if let Some((net, bits)) = parse_cidr(&entry) {
            if ip.is_some_and(|ip| cidr_contains(net, bits, ip)) {
                return false;
            }
            continue;
        }
        let (phost, pport) = split_host_port(&entry);
        if let Ok(pip) = phost.parse::<IpAddr>() {
            if ip == Some(pip) && (pport.is_empty() || pport == port) {
                return false;
            }
            continue;
        }
        if phost.is_empty() {
            continue;
        }
        // `*.x` and `.x` match subdomains only; `x` matches x and its subdomains.
        let phost = phost.strip_prefix('*').unwrap_or(phost);
        let (suffix, exact) = match phost.strip_prefix('.') {
            Some(_) => (phost.to_string(), None),
            None => (format!(".{phost}"), Some(phost)),
        };
        let hit = host.ends_with(&suffix) || exact == Some(host.as_str());
        if hit && (pport.is_empty() || pport == port) {
            return false;
        }
    }
    true
}

fn split_host_port(entry: &str) -> (&str, &str) {
    if let Some(rest) = entry.strip_prefix('[') {
        // [v6]:port or [v6]
        if let Some((h, tail)) = rest.split_once(']') {
            return (h, tail.strip_prefix(':').unwrap_or(""));
        }
    }
    match entry.rsplit_once(':') {
        // A bare IPv6 address has several colons and no port.
        Some((h, p)) if !h.contains(':') => (h, p),
        _ => (entry, ""),
    }
}

fn parse_cidr(entry: &str) -> Option<(IpAddr, u8)> {
    let (addr, bits) = entry.split_once('/')?;
    let addr: IpAddr = addr.parse().ok()?;
    let bits: u8 = bits.parse().ok()?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    (bits <= max).then_some((addr, bits))
}

fn cidr_contains(net: IpAddr, bits: u8, ip: IpAddr) -> bool {
    match (net, ip) {
        (IpAddr::V4(n), IpAddr::V4(i)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(bits)).unwrap_or(0);
            u32::from(n) & mask == u32::from(i) & mask
        }
        (IpAddr::V6(n), IpAddr::V6(i)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(bits)).unwrap_or(0);
            u128::from(n) & mask == u128::from(i) & mask
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(no_proxy: &str) -> ProxyEnv {
        ProxyEnv {
            http_proxy: Some("http://plain:3128".into()),
            https_proxy: Some("proxy.corp:3128".into()),
            no_proxy: Some(no_proxy.into()),
        }
    }

    fn via(server: &str, no_proxy: &str) -> Option<String> {
        proxy_for(&server.parse().unwrap(), &env(no_proxy))
    }

    #[test]
    fn scheme_picks_the_variable_and_a_bare_proxy_means_http() {
        assert_eq!(
            via("https://api.example.com:6443", ""),
            Some("http://proxy.corp:3128".into())
        );
        assert_eq!(
            via("http://api.example.com", ""),
            Some("http://plain:3128".into())
        );
        let none = ProxyEnv::default();
        assert_eq!(proxy_for(&"https://a.b".parse().unwrap(), &none), None);
    }

    #[test]
    fn loopback_and_localhost_are_never_proxied() {
        for server in [
            "https://localhost:6443",
            "https://127.0.0.1:6443",
            "https://127.9.9.9",
            "https://[::1]:6443",
        ] {
            assert_eq!(via(server, ""), None, "{server}");
        }
    }

    #[test]
    fn no_proxy_rules_follow_go() {
        let direct = |server: &str, rule: &str| via(server, rule).is_none();
        // Wildcard.
        assert!(direct("https://api.example.com", "*"));
        // CIDR and single IPs (with and without port).
        assert!(direct(
            "https://10.1.2.3:6443",
            "192.168.0.0/16, 10.0.0.0/8"
        ));
        assert!(!direct("https://11.1.2.3:6443", "10.0.0.0/8"));
        assert!(direct("https://10.1.2.3:6443", "10.1.2.3"));
        assert!(direct("https://10.1.2.3:6443", "10.1.2.3:6443"));
        assert!(!direct("https://10.1.2.3:6443", "10.1.2.3:443"));
        assert!(direct("https://[fd00::5]:6443", "fd00::/8"));
        // A plain name matches itself and subdomains.
        assert!(direct("https://example.com", "example.com"));
        assert!(direct("https://api.example.com", "example.com"));
        assert!(!direct("https://notexample.com", "example.com"));
        // A leading dot or `*.` matches subdomains only.
        assert!(direct("https://api.example.com", ".example.com"));
        assert!(!direct("https://example.com", ".example.com"));
        assert!(direct("https://api.example.com", "*.example.com"));
        // Ports, case, spaces and empty entries.
        assert!(direct(
            "https://api.example.com:6443",
            "other, ,API.Example.com:6443,"
        ));
        assert!(!direct(
            "https://api.example.com:6443",
            "api.example.com:443"
        ));
        assert!(direct("https://api.example.com", "api.example.com:443"));
        // A CIDR never matches a host name.
        assert!(!direct("https://api.example.com", "10.0.0.0/8"));
    }
}
