//! The one policy every edge asks (MQTT, CoAP, and the next ones): may this identity publish
//! for this meter, and are devices without an identity served on this listener. The edges
//! add only what is theirs (MQTT's topic, client-id and subscribe rules in `mqtt::auth`).

use crate::credentials::{CredentialStore, Glob};

/// Who speaks on a connection or session, once the edge has authenticated it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// No identity; only where [`anonymous_allowed`] says so. Publishes for any meter, as
    /// meterflow did before identities (the pipeline still checks topics and payloads).
    Anonymous,
    /// A device of the credential store (or the CN of a client certificate). Publishes for
    /// itself and the meters its globs match.
    Device {
        id: Box<str>,
        publish_for: Vec<Glob>,
    },
}

impl Identity {
    /// The device `id` with the globs the store gives it (none when the store has no
    /// credential for it: a certificate's CN).
    pub fn device(id: &str, store: &CredentialStore) -> Identity {
        Identity::Device {
            id: id.into(),
            publish_for: store
                .get(id)
                .map(|c| c.publish_for.clone())
                .unwrap_or_default(),
        }
    }

    pub fn id(&self) -> Option<&str> {
        match self {
            Identity::Anonymous => None,
            Identity::Device { id, .. } => Some(id),
        }
    }

    /// For logs and dead letters.
    pub fn label(&self) -> &str {
        self.id().unwrap_or("anonymous")
    }

    /// Whether this identity may publish for `meter_id` (see [`may_publish_for`]).
    pub fn may_publish_for(&self, meter_id: &str) -> bool {
        match self {
            Identity::Anonymous => true,
            Identity::Device { id, publish_for } => may_publish_for(id, publish_for, meter_id),
        }
    }
}

/// Whether the device `id` whose credential names `publish_for` may publish for `meter_id`:
/// its own meter, or one its globs match (a gateway or data concentrator).
pub fn may_publish_for(id: &str, publish_for: &[Glob], meter_id: &str) -> bool {
    id == meter_id || publish_for.iter().any(|g| g.matches(meter_id))
}

/// Whether the device `id` may publish for `meter_id` as the credential store has it now (an
/// edge that reads the store at each request, as CoAP does): a device the store no longer
/// holds (revoked, removed) may not, whatever its session says.
pub fn device_may_publish_for(store: &CredentialStore, id: &str, meter_id: &str) -> bool {
    store
        .get(id)
        .is_some_and(|c| may_publish_for(id, &c.publish_for, meter_id))
}

/// Whether a listener serves devices without an identity: where the config allows them
/// (`mqtt.allow_anonymous`, `coap.allow_anonymous`), or while the credential store is empty
/// on a loopback listener (the quick start). Asked again as the store changes.
pub fn anonymous_allowed(allow_anonymous: bool, loopback: bool, store_empty: bool) -> bool {
    allow_anonymous || (loopback && store_empty)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn globs(patterns: &[&str]) -> Vec<Glob> {
        patterns.iter().map(|g| Glob::new(g).unwrap()).collect()
    }

    #[test]
    fn who_may_publish_for_which_meter() {
        let meter = Identity::Device {
            id: "E1".into(),
            publish_for: Vec::new(),
        };
        let gateway = Identity::Device {
            id: "GW".into(),
            publish_for: globs(&["E*", "G??1"]),
        };
        // (identity, meter, may)
        let cases = [
            (&meter, "E1", true),
            (&meter, "E2", false),
            (&meter, "E10", false),
            (&gateway, "GW", true),
            (&gateway, "E99", true),
            (&gateway, "G001", true),
            (&gateway, "G0010", false),
            (&gateway, "X1", false),
            (&Identity::Anonymous, "anything", true),
        ];
        for (who, meter_id, may) in cases {
            assert_eq!(who.may_publish_for(meter_id), may, "{who:?} {meter_id}");
        }
    }

    #[test]
    fn a_device_publishes_as_the_store_has_it_now() {
        use crate::credentials::{Credential, Secret};
        let mut store = CredentialStore::default();
        let credential = |patterns: &[&str]| Credential {
            secret: Secret::new("0123456789abcdef").unwrap(),
            publish_for: globs(patterns),
            dlms: None,
        };
        store.add("E1", credential(&[])).unwrap();
        store.add("GW", credential(&["G*"])).unwrap();
        store.add("GONE", credential(&[])).unwrap();
        store.revoke("GONE");
        // (identity, meter, may)
        let cases = [
            ("E1", "E1", true),
            ("E1", "E2", false),
            ("GW", "G7", true),
            ("GW", "E1", false),
            ("GONE", "GONE", false),
            ("NOBODY", "NOBODY", false),
        ];
        for (id, meter_id, may) in cases {
            assert_eq!(
                device_may_publish_for(&store, id, meter_id),
                may,
                "{id} for {meter_id}"
            );
        }
    }

    #[test]
    fn anonymous_devices_only_where_allowed_or_on_loopback_with_an_empty_store() {
        // (allow_anonymous, loopback, store empty, allowed)
        let cases = [
            (false, true, true, true),
            (false, true, false, false),
            (false, false, true, false),
            (false, false, false, false),
            (true, false, false, true),
            (true, true, false, true),
        ];
        for (allow, loopback, empty, want) in cases {
            assert_eq!(
                anonymous_allowed(allow, loopback, empty),
                want,
                "allow_anonymous {allow}, loopback {loopback}, store empty {empty}"
            );
        }
    }
}
