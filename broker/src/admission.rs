//! The broker's admission policy for one CONNECT, as a pure function: what
//! the client asked for, the auth policy in force and the broker's counts
//! go in; the admitted connection's settings, or the refusal (counted
//! reason, the CONNACK code to answer with, why) come out. `connect.rs`
//! does the I/O around it and has one refuse path.
//!
//! In order: the client-id policy (an empty id only where MQTT allows it;
//! the broker then assigns one), the login, a handshake slot kept for
//! logins taken by an anonymous client, the will (a valid topic the client
//! may write), the keepalive ceiling, the connection capacity (the last
//! `reserved_connections` for logged-in users) and the anonymous
//! connections per address.

use crate::auth::{Policy, Who};
use crate::codec::{ConnectInfo, Refusal, Version};
use crate::config::Config;
use crate::stats::Reason;
use crate::topic;

/// What the broker counts when the CONNECT arrives.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Counts {
    /// Clients connected now.
    pub(crate) connected: i64,
    /// Sockets open from this client's address, its own included.
    pub(crate) from_ip: u32,
    /// The socket came in on a handshake slot kept for logins.
    pub(crate) reserved_slot: bool,
}

/// An admitted connection's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Admission {
    /// The logged-in user, `None` for anonymous clients.
    pub(crate) user: Option<String>,
    /// The client id: the client's, or one the broker assigned.
    pub(crate) client_id: String,
    pub(crate) assigned_id: bool,
    /// Keepalive after `max_keepalive`.
    pub(crate) keep_alive: u16,
    /// Set when the broker changed the keepalive (told to v5 clients).
    pub(crate) server_keep_alive: Option<u16>,
}

/// A refused CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refused {
    /// The counter it goes to.
    pub(crate) reason: Reason,
    /// The CONNACK refusal to answer with; `None`: close without one.
    pub(crate) answer: Option<Refusal>,
    /// For the log line.
    pub(crate) why: String,
    /// The user, when the login succeeded (for the log line).
    pub(crate) user: Option<String>,
}

fn refused(reason: Reason, answer: Option<Refusal>, why: impl Into<String>) -> Refused {
    Refused {
        reason,
        answer,
        why: why.into(),
        user: None,
    }
}

/// Decides one CONNECT (see the module documentation). `new_id` makes a
/// client id for a client that sent none.
pub(crate) fn admit(
    info: &ConnectInfo,
    policy: &Policy,
    cfg: &Config,
    counts: Counts,
    new_id: impl FnOnce() -> String,
) -> Result<Admission, Refused> {
    let v = info.version;
    let limits = &cfg.limits;
    let (client_id, assigned_id) = if info.client_id.is_empty() {
        let allowed = match v {
            Version::V5 => true,
            Version::V311 => info.clean_start,
            Version::V31 => false,
        };
        if !allowed {
            return Err(refused(
                Reason::BadClientId,
                Some(Refusal::BadClientId),
                "empty client id with a persistent session",
            ));
        }
        (new_id(), true)
    } else {
        (info.client_id.clone(), false)
    };

    let user = policy.login(info.login.as_ref()).map_err(|r| match r {
        crate::auth::Refusal::BadCredentials => refused(
            Reason::BadCredentials,
            Some(Refusal::BadCredentials),
            "wrong user name or password",
        ),
        crate::auth::Refusal::NotAuthorized => refused(
            Reason::NotAuthorized,
            Some(Refusal::NotAuthorized),
            "anonymous clients are not allowed",
        ),
    })?;
    let with_user = |mut r: Refused| {
        r.user.clone_from(&user);
        r
    };

    if counts.reserved_slot && user.is_none() {
        return Err(refused(
            Reason::Handshakes,
            Some(Refusal::Busy),
            "anonymous CONNECT on a handshake slot kept for clients that log in",
        ));
    }

    if let Some(w) = &info.will {
        let t = std::str::from_utf8(&w.topic)
            .ok()
            .filter(|t| topic::validate_name(t, cfg.topic_limits()).is_ok());
        let Some(t) = t else {
            return Err(with_user(refused(
                Reason::Malformed,
                None,
                "will topic invalid",
            )));
        };
        let who = Who {
            user: user.as_deref(),
            client_id: &client_id,
        };
        if !policy.may_write(who, t) {
            return Err(with_user(refused(
                Reason::AclWill,
                Some(Refusal::NotAuthorized),
                format!("will on {t:?}, a topic the client may not write"),
            )));
        }
    }

    // Keepalive ceiling (mosquitto's max_keepalive): v5 clients are told,
    // v3 ones asking for none are held to it silently, v3 ones asking for
    // more are refused.
    let max_ka = limits.max_keepalive;
    let (keep_alive, server_keep_alive) =
        if info.keep_alive > max_ka || (info.keep_alive == 0 && max_ka < 65535) {
            match v {
                Version::V5 => (max_ka, Some(max_ka)),
                _ if info.keep_alive == 0 => (max_ka, None),
                _ => {
                    return Err(with_user(refused(
                        Reason::BadClientId,
                        Some(Refusal::BadClientId),
                        format!("keepalive {} above max_keepalive {max_ka}", info.keep_alive),
                    )))
                }
            }
        } else {
            (info.keep_alive, None)
        };

    // Capacity: the last `reserved_connections` slots are for logged-in
    // users, so anonymous readers cannot lock bridges out.
    let cap = match user {
        Some(_) => limits.max_connections,
        None => limits.max_connections - cfg.reserved_connections(),
    };
    if counts.connected >= cap as i64 {
        return Err(with_user(refused(
            Reason::MaxConnections,
            Some(Refusal::Busy),
            format!("connection limit reached ({} of {cap})", counts.connected),
        )));
    }
    let per_ip = limits.max_connections_per_ip;
    if user.is_none() && per_ip > 0 && counts.from_ip as usize > per_ip {
        return Err(refused(
            Reason::MaxConnectionsPerIp,
            Some(Refusal::Busy),
            format!("more than max_connections_per_ip ({per_ip}) from one address"),
        ));
    }
    Ok(Admission {
        user,
        client_id,
        assigned_id,
        keep_alive,
        server_keep_alive,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use rumqttd::protocol::{LastWill, Login, QoS};

    fn info(v: Version, id: &str) -> ConnectInfo {
        ConnectInfo {
            version: v,
            client_id: id.into(),
            clean_start: true,
            keep_alive: 60,
            login: None,
            will: None,
            will_properties: None,
            properties: None,
        }
    }

    /// A policy with one user, `bridge` / `secret`, and no ACL.
    fn policy(dir: &std::path::Path) -> Policy {
        let p = dir.join("passwd");
        let mut f = crate::auth::PasswordFile::default();
        f.set("bridge", "secret").unwrap();
        std::fs::write(&p, f.render()).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        Policy::load(&crate::config::AuthConfig {
            password_file: Some(p),
            ..Default::default()
        })
        .unwrap()
    }

    fn login() -> Option<Login> {
        Some(Login {
            username: "bridge".into(),
            password: "secret".into(),
        })
    }

    fn cfg(f: impl FnOnce(&mut Config)) -> Config {
        let mut c = Config::default();
        f(&mut c);
        c
    }

    /// [`admit`] with the default config, no counts, an id given.
    fn plain(i: &ConnectInfo, p: &Policy) -> Result<Admission, Refused> {
        admit(
            i,
            p,
            &Config::default(),
            Counts::default(),
            || unreachable!(),
        )
    }

    fn reason(r: Result<Admission, Refused>) -> (Reason, Option<Refusal>) {
        let r = r.expect_err("refused");
        (r.reason, r.answer)
    }

    #[test]
    fn a_plain_connect_is_admitted_as_asked() {
        let d = tempfile::tempdir().unwrap();
        let a = admit(
            &info(Version::V311, "c1"),
            &policy(d.path()),
            &cfg(|_| {}),
            Counts::default(),
            || unreachable!(),
        )
        .unwrap();
        assert_eq!(
            a,
            Admission {
                user: None,
                client_id: "c1".into(),
                assigned_id: false,
                keep_alive: 60,
                server_keep_alive: None
            }
        );
    }

    #[test]
    fn client_ids() {
        let d = tempfile::tempdir().unwrap();
        let (p, c) = (policy(d.path()), cfg(|_| {}));
        let a = admit(&info(Version::V5, ""), &p, &c, Counts::default(), || {
            "auto-1".into()
        })
        .unwrap();
        assert_eq!((a.client_id.as_str(), a.assigned_id), ("auto-1", true));
        let mut persistent = info(Version::V311, "");
        persistent.clean_start = false;
        assert_eq!(
            reason(admit(&persistent, &p, &c, Counts::default(), || "x".into())),
            (Reason::BadClientId, Some(Refusal::BadClientId))
        );
        assert_eq!(
            reason(admit(
                &info(Version::V31, ""),
                &p,
                &c,
                Counts::default(),
                || "x".into()
            )),
            (Reason::BadClientId, Some(Refusal::BadClientId))
        );
    }

    #[test]
    fn logins() {
        let d = tempfile::tempdir().unwrap();
        let p = policy(d.path());
        let mut i = info(Version::V5, "b");
        i.login = login();
        let a = plain(&i, &p).unwrap();
        assert_eq!(a.user.as_deref(), Some("bridge"));
        i.login = Some(Login {
            username: "bridge".into(),
            password: "wrong".into(),
        });
        assert_eq!(
            reason(plain(&i, &p)),
            (Reason::BadCredentials, Some(Refusal::BadCredentials))
        );
        let no_anon = Policy::load(&crate::config::AuthConfig {
            allow_anonymous: false,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            reason(admit(
                &info(Version::V5, "a"),
                &no_anon,
                &cfg(|_| {}),
                Counts::default(),
                || unreachable!()
            )),
            (Reason::NotAuthorized, Some(Refusal::NotAuthorized))
        );
    }

    #[test]
    fn reserved_handshake_slots_are_for_logins() {
        let d = tempfile::tempdir().unwrap();
        let p = policy(d.path());
        let counts = Counts {
            reserved_slot: true,
            ..Default::default()
        };
        assert_eq!(
            reason(admit(
                &info(Version::V311, "a"),
                &p,
                &cfg(|_| {}),
                counts,
                || unreachable!()
            )),
            (Reason::Handshakes, Some(Refusal::Busy))
        );
        let mut i = info(Version::V311, "b");
        i.login = login();
        assert!(admit(&i, &p, &cfg(|_| {}), counts, || unreachable!()).is_ok());
    }

    #[test]
    fn wills() {
        let d = tempfile::tempdir().unwrap();
        let p = policy(d.path());
        let will = |t: &'static [u8]| LastWill {
            topic: Bytes::from_static(t),
            message: Bytes::from_static(b"down"),
            qos: QoS::AtMostOnce,
            retain: true,
        };
        let mut i = info(Version::V311, "w");
        i.will = Some(will(b"status/x"));
        assert_eq!(
            reason(plain(&i, &p)),
            (Reason::AclWill, Some(Refusal::NotAuthorized)),
            "anonymous clients write nothing, wills included"
        );
        i.login = login();
        assert!(plain(&i, &p).is_ok());
        i.will = Some(will(b"a/+/b"));
        assert_eq!(
            reason(plain(&i, &p)),
            (Reason::Malformed, None),
            "a will topic with a wildcard: closed without a CONNACK"
        );
    }

    #[test]
    fn keepalive_ceiling() {
        let d = tempfile::tempdir().unwrap();
        let p = policy(d.path());
        let c = cfg(|c| c.limits.max_keepalive = 30);
        let mut i = info(Version::V5, "k");
        i.keep_alive = 100;
        let a = admit(&i, &p, &c, Counts::default(), || unreachable!()).unwrap();
        assert_eq!(
            (a.keep_alive, a.server_keep_alive),
            (30, Some(30)),
            "v5 is told"
        );
        i.version = Version::V311;
        assert_eq!(
            reason(admit(&i, &p, &c, Counts::default(), || unreachable!())),
            (Reason::BadClientId, Some(Refusal::BadClientId)),
            "v3 cannot be told: refused"
        );
        i.keep_alive = 0;
        let a = admit(&i, &p, &c, Counts::default(), || unreachable!()).unwrap();
        assert_eq!(
            (a.keep_alive, a.server_keep_alive),
            (30, None),
            "none means the ceiling"
        );
    }

    #[test]
    fn capacity_keeps_slots_for_logins_and_caps_anonymous_per_address() {
        let d = tempfile::tempdir().unwrap();
        let p = policy(d.path());
        let c = cfg(|c| {
            c.limits.max_connections = 10;
            c.limits.reserved_connections = Some(2);
            c.limits.max_connections_per_ip = 3;
        });
        let at = |connected, from_ip| Counts {
            connected,
            from_ip,
            reserved_slot: false,
        };
        let anon = info(Version::V311, "a");
        let mut bridge = info(Version::V311, "b");
        bridge.login = login();
        assert!(admit(&anon, &p, &c, at(7, 1), || unreachable!()).is_ok());
        assert_eq!(
            reason(admit(&anon, &p, &c, at(8, 1), || unreachable!())),
            (Reason::MaxConnections, Some(Refusal::Busy))
        );
        assert!(
            admit(&bridge, &p, &c, at(9, 1), || unreachable!()).is_ok(),
            "a reserved slot"
        );
        assert_eq!(
            reason(admit(&bridge, &p, &c, at(10, 1), || unreachable!())),
            (Reason::MaxConnections, Some(Refusal::Busy))
        );
        assert_eq!(
            reason(admit(&anon, &p, &c, at(1, 4), || unreachable!())),
            (Reason::MaxConnectionsPerIp, Some(Refusal::Busy))
        );
        assert!(
            admit(&bridge, &p, &c, at(1, 40), || unreachable!()).is_ok(),
            "logins are not capped per address"
        );
    }
}
