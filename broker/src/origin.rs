//! Which web pages may open MQTT over websockets: the `Origin` rules,
//! pure functions of the header, the address a connection arrived at and
//! `ws_allowed_origins` (the config checks its list with [`host`], the
//! websocket upgrade decides with [`allowed`]).

/// The host of an Origin (`scheme://host[:port]`), lowercased, IPv6
/// without brackets; `None` when it is not one (`null`, garbage).
pub(crate) fn host(origin: &str) -> Option<String> {
    let (scheme, rest) = origin.trim().split_once("://")?;
    if scheme.is_empty()
        || !scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
    {
        return None;
    }
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.is_empty() || rest.contains(['/', '?', '#', '@', ' ']) {
        return None;
    }
    let host = if let Some(v6) = rest.strip_prefix('[') {
        v6.split_once(']')?.0
    } else {
        match rest.rsplit_once(':') {
            Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) => h,
            Some(_) => return None,
            None => rest,
        }
    };
    (!host.is_empty()).then(|| host.to_ascii_lowercase())
}

/// Whether a loopback or private address (RFC 1918, ULA, link-local, CGNAT).
fn internal_ip(ip: std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V4(v4) => {
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || (v4.octets()[0] == 100 && (v4.octets()[1] & 0xc0) == 64)
        }
        std::net::IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return internal_ip(std::net::IpAddr::V4(v4));
            }
            v6.is_loopback()
                || (v6.segments()[0] & 0xfe00) == 0xfc00
                || (v6.segments()[0] & 0xffc0) == 0xfe80
        }
    }
}

/// Which web pages may open MQTT over websockets on one connection: the
/// operator's list (`ws_allowed_origins`), or by default any page when the
/// connection arrived at a public address, and only pages served from a
/// loopback or private IP literal or `localhost` when it arrived at an
/// internal one (a page on the internet cannot make a visitor's browser
/// read an internal bus; a host name is not trusted, since DNS rebinding
/// can point any name at 127.0.0.1). No Origin (not a browser): allowed.
pub(crate) fn allowed(origin: Option<&str>, local: std::net::IpAddr, allowed: &[String]) -> bool {
    let Some(origin) = origin else {
        return true;
    };
    if !allowed.is_empty() {
        let norm = |o: &str| o.trim().trim_end_matches('/').to_ascii_lowercase();
        return allowed.iter().any(|a| a == "*" || norm(a) == norm(origin));
    }
    if !internal_ip(local) {
        return true;
    }
    let Some(host) = host(origin) else {
        return false;
    };
    if host == "localhost" || host.ends_with(".localhost") {
        return true;
    }
    host.parse::<std::net::IpAddr>().is_ok_and(internal_ip)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn origins_are_parsed_strictly() {
        assert_eq!(host("http://127.0.0.1:8080").as_deref(), Some("127.0.0.1"));
        assert_eq!(
            host("https://Status.Example.org").as_deref(),
            Some("status.example.org")
        );
        assert_eq!(host("http://[::1]:3000").as_deref(), Some("::1"));
        for bad in [
            "null",
            "",
            "127.0.0.1",
            "http://",
            "http://a/b",
            "http://u@h",
            "http://h:x",
        ] {
            assert_eq!(host(bad), None, "{bad}");
        }
    }

    #[test]
    fn internal_listeners_refuse_pages_from_elsewhere_by_default() {
        let lo = ip("127.0.0.1");
        for ok in [
            None,
            Some("http://127.0.0.1:9000"),
            Some("http://localhost:8080"),
            Some("http://[::1]"),
            Some("http://10.1.2.3"),
            Some("http://192.168.0.7:80"),
        ] {
            assert!(allowed(ok, lo, &[]), "{ok:?}");
        }
        for bad in [
            "https://evil.example",
            "null",
            "http://rebound.example:8080",
            "http://8.8.8.8",
        ] {
            assert!(!allowed(Some(bad), lo, &[]), "{bad}");
        }
        assert!(!allowed(Some("https://evil.example"), ip("10.0.0.5"), &[]));
        assert!(!allowed(
            Some("https://evil.example"),
            ip("::ffff:192.168.1.1"),
            &[]
        ));
        assert!(!allowed(Some("https://evil.example"), ip("fd00::1"), &[]));
    }

    #[test]
    fn public_listeners_take_any_page_and_a_list_is_exact() {
        assert!(allowed(
            Some("https://anyone.example"),
            ip("203.0.113.9"),
            &[]
        ));
        let list = vec!["https://status.example.org".to_owned()];
        assert!(allowed(
            Some("https://status.example.org/"),
            ip("127.0.0.1"),
            &list
        ));
        assert!(
            !allowed(Some("http://127.0.0.1:8080"), ip("127.0.0.1"), &list),
            "the list replaces the default"
        );
        assert!(!allowed(
            Some("https://status.example.org.evil"),
            ip("203.0.113.9"),
            &list
        ));
        assert!(
            allowed(None, ip("127.0.0.1"), &list),
            "non-browsers send no Origin"
        );
        assert!(allowed(Some("null"), ip("127.0.0.1"), &["*".to_owned()]));
    }
}
