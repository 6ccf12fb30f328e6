//! Every URL a Firehose program is given (the broker, RabbitMQ, IMAP,
//! Gerrit's SSH) is read here, with the `url` crate: userinfo percent-decoded (so a
//! password may hold `@`, `:` or `/` as `%40`, `%3A`, `%2F`), IPv6 hosts
//! without their brackets, the scheme's default port, and a form to show
//! that never holds the password.

/// The schemes of a broker URL, with their default ports.
pub const MQTT_SCHEMES: &[(&str, u16)] = &[
    ("mqtt", 1883),
    ("tcp", 1883),
    ("mqtts", 8883),
    ("ssl", 8883),
    ("ws", 80),
    ("wss", 443),
];

/// What a broker URL looks like, for errors.
pub const MQTT_FORM: &str =
    "mqtt://, mqtts://, ws:// or wss:// [USER[:PASSWORD]@]HOST[:PORT][/PATH]";

/// A URL's parts.
#[derive(Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `mqtt`, `amqps`, `imap`, ...
    pub scheme: String,
    /// Decoded; `None` when absent.
    pub user: Option<String>,
    /// Decoded; never shown.
    pub password: Option<String>,
    /// Without brackets for IPv6.
    pub host: String,
    /// The URL's port, or the scheme's default.
    pub port: u16,
    /// The path as written (still percent-encoded), `""` when none.
    pub path: String,
    /// The query, without `?`.
    pub query: Option<String>,
    /// The URL without the password, for logs and CloudEvents `source`.
    pub shown: String,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown)
    }
}

/// Why a URL was refused; says what was expected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{url}: {reason}; expected {expected}")]
pub struct UrlError {
    /// The URL as given, password replaced.
    pub url: String,
    /// What is wrong.
    pub reason: String,
    /// The form expected.
    pub expected: String,
}

/// Parses `text`, whose scheme must be one of `schemes` (scheme, default
/// port). `expected` names the form, e.g. `amqp[s]://USER[:PASS]@HOST[:PORT]/VHOST`.
pub fn parse(text: &str, schemes: &[(&str, u16)], expected: &str) -> Result<Endpoint, UrlError> {
    let err = |reason: String| UrlError {
        url: redact(text),
        reason,
        expected: expected.to_owned(),
    };
    let u = url::Url::parse(text).map_err(|e| err(e.to_string()))?;
    let Some(&(_, default_port)) = schemes.iter().find(|(s, _)| *s == u.scheme()) else {
        return Err(err(format!("scheme {:?}", u.scheme())));
    };
    let host = u
        .host_str()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| err("no host".into()))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8()
            .map(|c| c.into_owned())
            .map_err(|_| err("user or password is not UTF-8 once decoded".into()))
    };
    let user = match u.username() {
        "" => None,
        name => Some(decode(name)?),
    };
    let password = u.password().map(decode).transpose()?;
    let mut shown = u.clone();
    // Cannot fail: the URL has a host (checked above).
    let _ = shown.set_password(None);
    Ok(Endpoint {
        scheme: u.scheme().to_owned(),
        user,
        password,
        host,
        port: u.port().unwrap_or(default_port),
        path: u.path().to_owned(),
        query: u.query().map(str::to_owned),
        shown: shown.to_string(),
    })
}

/// Percent-decodes a URL component (a path, a folder).
pub fn decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

/// The URL with any password replaced, for error messages.
pub fn redact(s: &str) -> String {
    match url::Url::parse(s) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        Ok(_) => s.to_owned(),
        // Not a URL: hide whatever sits between "://" and "@" after a ':'.
        Err(_) => match (s.find("://"), s.rfind('@')) {
            (Some(a), Some(b)) if b > a => match s[a + 3..b].split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &s[..a + 3], &s[b..]),
                None => s.to_owned(),
            },
            _ => s.to_owned(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn userinfo_decoded_hosts_plain_secrets_hidden() {
        let e = parse(
            "amqp://u:p%40ss%3Aw%2Frd@10.0.0.7/%2f",
            &[("amqp", 5672)],
            "X",
        )
        .unwrap();
        assert_eq!(e.user.as_deref(), Some("u"));
        assert_eq!(e.password.as_deref(), Some("p@ss:w/rd"));
        assert_eq!(
            (e.host.as_str(), e.port, e.path.as_str()),
            ("10.0.0.7", 5672, "/%2f")
        );
        assert_eq!(e.shown, "amqp://u@10.0.0.7/%2f");
        let e = parse("wss://[::1]:8443/mqtt", &[("wss", 443)], "X").unwrap();
        assert_eq!((e.host.as_str(), e.port), ("::1", 8443));
        let e = parse("ssh://n%C3%B6va@gerrit", &[("ssh", 29418)], "X").unwrap();
        assert_eq!((e.user.as_deref(), e.port), (Some("növa"), 29418));
        let bad = parse("http://a:secret@h/", &[("amqp", 1)], "amqp://...").unwrap_err();
        assert!(
            bad.to_string().contains("a:***@h") && !bad.to_string().contains("secret"),
            "{bad}"
        );
        assert!(parse("amqp:///x", &[("amqp", 1)], "X").is_err());
        assert!(parse("amqp://h:x", &[("amqp", 1)], "X").is_err());
    }
}
