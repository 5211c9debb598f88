//! Who a connection is, and what it may do over MQTT: authentication against the credential
//! store (or a TLS client certificate), and the topic, client-id and subscribe rules on top of
//! the edge policy ([`crate::edge::policy`]).
//! Pure functions of the store and the request, so every rule has a table test.

use meterflow_proto::is_valid_meter_id;

use crate::credentials::{verify_unknown, CredentialStore};
use crate::edge::Identity;

impl Identity {
    /// Whether a publish to `topic` is this identity's to make: `meters/{id}/...` with its
    /// own id or one its globs match, at any depth (what is not `meters/{meter_id}/{format}`
    /// is taken and becomes a `bad_topic` dead letter that names the sender: a topic mistake
    /// is not an impersonation). Anonymous clients may publish anywhere (the pipeline
    /// dead-letters topics that are not `meters/...`).
    pub fn may_publish_to(&self, topic: &str) -> bool {
        if *self == Identity::Anonymous {
            return true;
        }
        let mut parts = topic.split('/');
        let (Some("meters"), Some(meter), Some(_)) = (parts.next(), parts.next(), parts.next())
        else {
            return false;
        };
        self.may_publish_for(meter)
    }

    /// Whether this identity may use `client_id`: not the meter id of another device of the
    /// store (so nobody poses as a meter by its client id), unless it is a gateway's meter.
    pub fn may_use_client_id(&self, client_id: &str, store: &CredentialStore) -> bool {
        self.id() == Some(client_id)
            || (store.get(client_id).is_none() && !store.is_revoked(client_id))
            || matches!(self, Identity::Device { publish_for, .. }
                if publish_for.iter().any(|g| g.matches(client_id)))
    }

    /// The one filter a client may subscribe to: its own `meters/{id}/cmd/#`, reserved for
    /// downlink. No client reads any meter's data.
    pub fn may_subscribe(&self, filter: &str) -> bool {
        match self {
            Identity::Anonymous => false,
            Identity::Device { id, .. } => filter
                .strip_prefix("meters/")
                .and_then(|rest| rest.strip_prefix(&**id))
                .is_some_and(|rest| rest == "/cmd/#"),
        }
    }
}

/// Why a CONNECT is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denial {
    /// No username (and no client certificate) where identity is required.
    NoCredentials,
    /// An unknown username or a wrong secret.
    BadCredentials,
    /// A client certificate whose CN is not a meter id, or that names a revoked one.
    BadCertificate,
}

impl Denial {
    /// The `reason` label of `meterflow_mqtt_denied_total`.
    pub fn label(self) -> &'static str {
        match self {
            Denial::NoCredentials => "no_credentials",
            Denial::BadCredentials => "bad_credentials",
            Denial::BadCertificate => "bad_certificate",
        }
    }
}

/// Authenticates a CONNECT. `cert_cn` is the CN of a client certificate that rustls verified
/// against `mqtt.tls_client_ca`; `anonymous_ok` says whether this listener takes anonymous
/// devices (`mqtt.allow_anonymous`, or an empty store on a loopback listener).
pub fn authenticate(
    store: &CredentialStore,
    anonymous_ok: bool,
    username: Option<&str>,
    password: Option<&[u8]>,
    cert_cn: Option<&str>,
) -> Result<Identity, Denial> {
    let username = username.filter(|u| !u.is_empty());
    if let Some(cn) = cert_cn {
        if !is_valid_meter_id(cn) || store.is_revoked(cn) {
            return Err(Denial::BadCertificate);
        }
        if username.is_some_and(|u| u != cn) {
            return Err(Denial::BadCredentials);
        }
        return Ok(Identity::device(cn, store));
    }
    match username {
        Some(user) => match store.get(user) {
            Some(credential) if credential.secret.verify(password.unwrap_or_default()) => {
                Ok(Identity::Device {
                    id: user.into(),
                    publish_for: credential.publish_for.clone(),
                })
            }
            Some(_) => Err(Denial::BadCredentials),
            // Nothing to check a name against: the quick start's clients may send any.
            None if store.is_empty() && anonymous_ok => Ok(Identity::Anonymous),
            None => {
                // As long as for a known name: the answer's time does not tell which exist.
                verify_unknown(password.unwrap_or_default());
                Err(Denial::BadCredentials)
            }
        },
        None if anonymous_ok => Ok(Identity::Anonymous),
        None => Err(Denial::NoCredentials),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credentials::{Credential, Glob, Secret};

    const SECRET: &str = "s3cret-s3cret-s3cret";

    fn store() -> CredentialStore {
        let mut s = CredentialStore::default();
        let cred = |globs: &[&str]| Credential {
            secret: Secret::new(SECRET).unwrap(),
            publish_for: globs.iter().map(|g| Glob::new(g).unwrap()).collect(),
            dlms: None,
        };
        s.add("E1", cred(&[])).unwrap();
        s.add("GW", cred(&["E1*", "G?"])).unwrap();
        s.add("GONE", cred(&[])).unwrap();
        s.revoke("GONE");
        s
    }

    fn device(id: &str) -> Identity {
        Identity::Device {
            id: id.into(),
            publish_for: Vec::new(),
        }
    }

    #[test]
    fn authentication_rules() {
        let s = store();
        let empty = CredentialStore::default();
        let pw = Some(SECRET.as_bytes());
        let bad = Some(&b"wrong-wrong-wrong"[..]);
        // (store, anonymous_ok, user, password, cert CN) -> outcome
        type Case<'a> = (
            &'a CredentialStore,
            bool,
            Option<&'a str>,
            Option<&'a [u8]>,
            Option<&'a str>,
            Result<Option<&'a str>, Denial>,
        );
        let cases: Vec<Case> = vec![
            (&s, false, Some("E1"), pw, None, Ok(Some("E1"))),
            (
                &s,
                false,
                Some("E1"),
                bad,
                None,
                Err(Denial::BadCredentials),
            ),
            (
                &s,
                false,
                Some("E1"),
                None,
                None,
                Err(Denial::BadCredentials),
            ),
            (
                &s,
                false,
                Some("NOPE"),
                pw,
                None,
                Err(Denial::BadCredentials),
            ),
            (
                &s,
                false,
                Some("GONE"),
                pw,
                None,
                Err(Denial::BadCredentials),
            ),
            (&s, false, None, None, None, Err(Denial::NoCredentials)),
            (&s, false, Some(""), None, None, Err(Denial::NoCredentials)),
            // allow_anonymous with a store: no name is anonymous, a wrong name is refused.
            (&s, true, None, None, None, Ok(None)),
            (
                &s,
                true,
                Some("NOPE"),
                pw,
                None,
                Err(Denial::BadCredentials),
            ),
            (&s, true, Some("E1"), bad, None, Err(Denial::BadCredentials)),
            // Empty store on loopback (the quick start): anyone, whatever name they give.
            (&empty, true, Some("anything"), bad, None, Ok(None)),
            (&empty, false, None, None, None, Err(Denial::NoCredentials)),
            (
                &empty,
                false,
                Some("x"),
                pw,
                None,
                Err(Denial::BadCredentials),
            ),
            // Client certificates: the CN is the meter, no password; revoked ones are refused.
            (&s, false, None, None, Some("CERT-9"), Ok(Some("CERT-9"))),
            (
                &s,
                false,
                Some("CERT-9"),
                None,
                Some("CERT-9"),
                Ok(Some("CERT-9")),
            ),
            (
                &s,
                false,
                Some("E1"),
                pw,
                Some("CERT-9"),
                Err(Denial::BadCredentials),
            ),
            (
                &s,
                false,
                None,
                None,
                Some("GONE"),
                Err(Denial::BadCertificate),
            ),
            (
                &s,
                false,
                None,
                None,
                Some("not a meter"),
                Err(Denial::BadCertificate),
            ),
        ];
        for (i, (store, anon, user, pass, cn, want)) in cases.into_iter().enumerate() {
            let got = authenticate(store, anon, user, pass, cn);
            let got = got.as_ref().map(|p| p.id()).map_err(|d| *d);
            assert_eq!(got, want, "case {i}: {user:?} {cn:?}");
        }
        // Client ids: a device's own id, or any id that is no other device's.
        let e1 = device("E1");
        assert!(e1.may_use_client_id("E1", &s));
        assert!(e1.may_use_client_id("e1-modem-7", &s));
        assert!(!e1.may_use_client_id("GW", &s), "another device's id");
        assert!(!e1.may_use_client_id("GONE", &s), "a revoked device's id");
        assert!(!Identity::Anonymous.may_use_client_id("E1", &s));
        // A gateway may use the ids of the meters it speaks for (a connection per meter).
        let gw = authenticate(&s, false, Some("GW"), Some(SECRET.as_bytes()), None).unwrap();
        assert!(gw.may_use_client_id("E1", &s));
        // A certificate of a gateway in the store takes its globs.
        let gw = authenticate(&s, false, None, None, Some("GW")).unwrap();
        assert!(gw.may_publish_to("meters/E12/pb"));
    }

    #[test]
    fn publish_and_subscribe_rules() {
        let s = store();
        let gw = authenticate(&s, false, Some("GW"), Some(SECRET.as_bytes()), None).unwrap();
        let cases = [
            (device("E1"), "meters/E1/json", true),
            (device("E1"), "meters/E1/status", true),
            (device("E1"), "meters/E1/anything/else", true),
            (device("E1"), "meters/E2/json", false),
            (device("E1"), "meters/E1", false),
            (device("E1"), "meters/E10/json", false),
            (device("E1"), "other/E1/json", false),
            (device("E1"), "", false),
            (gw.clone(), "meters/GW/json", true),
            (gw.clone(), "meters/E1/pb", true),
            (gw.clone(), "meters/E155/pb", true),
            (gw.clone(), "meters/G1/pb", true),
            (gw.clone(), "meters/G12/pb", false),
            (gw.clone(), "meters/X/pb", false),
            (Identity::Anonymous, "meters/E2/json", true),
            (Identity::Anonymous, "junk", true),
        ];
        for (p, topic, want) in cases {
            assert_eq!(p.may_publish_to(topic), want, "{p:?} {topic}");
        }
        let subs = [
            (device("E1"), "meters/E1/cmd/#", true),
            (device("E1"), "meters/E2/cmd/#", false),
            (device("E1"), "meters/E1/#", false),
            (device("E1"), "meters/+/cmd/#", false),
            (device("E1"), "#", false),
            (device("E1"), "meters/E1/cmd/x", false),
            (gw, "meters/E1/cmd/#", false),
            (Identity::Anonymous, "meters/E1/cmd/#", false),
        ];
        for (p, filter, want) in subs {
            assert_eq!(p.may_subscribe(filter), want, "{p:?} {filter}");
        }
    }
}
