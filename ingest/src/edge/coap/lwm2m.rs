//! LwM2M 1.1 registration (the Registration interface, `/rd`): which endpoint is at which
//! address, so that a Send (`POST /dp`) from that address is stored under the endpoint's
//! meter id.
//!
//! - Register `POST /rd?ep=NAME&lt=SECONDS&lwm2m=1.1&b=U` answers 2.01 Created with
//!   Location-Path `rd/{id}`; registering an endpoint again replaces its old registration.
//! - Update `POST /rd/{id}` (optionally `lt`, `b`, a new object list) refreshes the lifetime
//!   and takes the address (and DTLS session) the update came from (NAT rebinding on cellular
//!   links, a new handshake).
//! - De-register `DELETE /rd/{id}` answers 2.02 Deleted.
//! - A registration not updated within its lifetime (plus a grace period) expires.
//!
//! The endpoint name becomes the meter id: a leading `urn:` is dropped and `:` becomes `-`,
//! so `urn:imei:352099001761481` is meter `imei-352099001761481`. A name that is still not
//! 1 to 64 of `[A-Za-z0-9._-]` is refused with 4.00. Registrations live in memory only: after
//! a restart a device's next update gets 4.04 and it registers again, as the protocol
//! expects. At most `max_registrations` are kept (expired ones go first; 5.03 past that).

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use meterflow_proto::is_valid_meter_id;

/// The lifetime when the client gives none (LwM2M 1.1 §6.2.1: 86400 s).
pub const DEFAULT_LIFETIME_S: u64 = 86_400;
/// How long past its lifetime a registration is kept (late updates over slow links).
pub const GRACE: Duration = Duration::from_secs(60);
/// The longest lifetime taken (LwM2M's `lt` is a 32-bit count of seconds; more is refused).
pub const MAX_LIFETIME_S: u64 = u32::MAX as u64;
/// The object links kept per registration at most, bytes (a meter lists a few dozen bytes).
pub const MAX_OBJECTS_BYTES: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    pub endpoint: String,
    pub meter_id: String,
    pub lifetime_s: u64,
    pub version: String,
    pub binding: String,
    /// The object links the client listed (`</3/0>,</4/0>`), as sent.
    pub objects: String,
    pub address: SocketAddr,
    /// The DTLS session it was registered or last updated in (none on plain CoAP): a Send is
    /// taken only in that session.
    pub session: Option<u64>,
    pub updated: Instant,
}

impl Registration {
    fn expires(&self) -> Instant {
        // lifetime_s is at most MAX_LIFETIME_S; checked anyway, as Instant + Duration panics
        // on overflow.
        self.updated
            .checked_add(Duration::from_secs(self.lifetime_s) + GRACE)
            .unwrap_or(self.updated + Duration::from_secs(u64::from(u32::MAX)))
    }
}

/// Why a registration was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum RegisterError {
    /// 4.00 with this text.
    Bad(String),
    /// 5.03: the registry is full.
    Full,
}

pub struct Registry {
    max: usize,
    by_id: HashMap<String, Registration>,
    by_endpoint: HashMap<String, String>,
    by_address: HashMap<SocketAddr, String>,
    ids: std::collections::hash_map::RandomState,
    counter: u64,
}

/// The query of a register or update request, parsed.
#[derive(Debug, Default)]
pub struct Params<'a> {
    pub endpoint: Option<&'a str>,
    pub lifetime_s: Option<u64>,
    pub version: Option<&'a str>,
    pub binding: Option<&'a str>,
}

impl<'a> Params<'a> {
    /// Reads `ep`, `lt`, `lwm2m`, `b` from Uri-Query options; other parameters are ignored
    /// (`sms`, `Q`, ...), a bad `lt` is an error.
    pub fn parse(queries: &[&'a str]) -> Result<Params<'a>, String> {
        let mut params = Params::default();
        for q in queries {
            let (key, value) = q.split_once('=').unwrap_or((q, ""));
            match key {
                "ep" => params.endpoint = Some(value),
                "lt" => {
                    let lt = value
                        .parse::<u64>()
                        .ok()
                        .filter(|lt| (1..=MAX_LIFETIME_S).contains(lt))
                        .ok_or_else(|| {
                            format!(
                                "lt={value:?} is not a lifetime in seconds (1 to {MAX_LIFETIME_S})"
                            )
                        })?;
                    params.lifetime_s = Some(lt);
                }
                "lwm2m" => params.version = Some(value),
                "b" => params.binding = Some(value),
                _ => {}
            }
        }
        Ok(params)
    }
}

/// The object links, cut at [`MAX_OBJECTS_BYTES`] (at a link boundary where there is one).
fn cut(objects: &str) -> String {
    if objects.len() <= MAX_OBJECTS_BYTES {
        return objects.to_string();
    }
    let mut end = MAX_OBJECTS_BYTES;
    while !objects.is_char_boundary(end) {
        end -= 1;
    }
    let head = &objects[..end];
    head[..head.rfind(',').unwrap_or(head.len())].to_string()
}

/// The meter id an endpoint name stands for, if it can be one.
pub fn meter_id_of(endpoint: &str) -> Option<String> {
    let name = endpoint.strip_prefix("urn:").unwrap_or(endpoint);
    let id = name.replace(':', "-");
    is_valid_meter_id(&id).then_some(id)
}

impl Registry {
    pub fn new(max: usize) -> Self {
        Registry {
            max: max.max(1),
            by_id: HashMap::new(),
            by_endpoint: HashMap::new(),
            by_address: HashMap::new(),
            ids: std::collections::hash_map::RandomState::new(),
            counter: 0,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Registers (or re-registers) an endpoint; returns the registration id.
    pub fn register(
        &mut self,
        params: &Params<'_>,
        objects: &str,
        address: SocketAddr,
        session: Option<u64>,
        now: Instant,
    ) -> Result<String, RegisterError> {
        let endpoint = params
            .endpoint
            .filter(|e| !e.is_empty())
            .ok_or_else(|| RegisterError::Bad("registration needs ?ep=<endpoint name>".into()))?;
        let meter_id = meter_id_of(endpoint).ok_or_else(|| {
            RegisterError::Bad(format!(
                "endpoint name {endpoint:?} cannot be a meter id (1 to 64 of [A-Za-z0-9._-] after urn: is dropped and : becomes -)"
            ))
        })?;
        if let Some(version) = params.version {
            if !version.starts_with("1.") {
                return Err(RegisterError::Bad(format!(
                    "LwM2M version {version:?} is not supported (1.0, 1.1 and 1.2 are)"
                )));
            }
        }
        if let Some(old) = self.by_endpoint.get(endpoint).cloned() {
            self.remove(&old);
        }
        if self.by_id.len() >= self.max {
            self.expire(now);
            if self.by_id.len() >= self.max {
                return Err(RegisterError::Full);
            }
        }
        let id = self.new_id();
        let registration = Registration {
            endpoint: endpoint.to_string(),
            meter_id,
            lifetime_s: params.lifetime_s.unwrap_or(DEFAULT_LIFETIME_S),
            version: params.version.unwrap_or("1.0").to_string(),
            binding: params.binding.unwrap_or("U").to_string(),
            objects: cut(objects),
            address,
            session,
            updated: now,
        };
        self.by_endpoint.insert(endpoint.to_string(), id.clone());
        self.by_address.insert(address, id.clone());
        self.by_id.insert(id.clone(), registration);
        Ok(id)
    }

    /// Refreshes a registration; false when it is not known (the client must register).
    pub fn update(
        &mut self,
        id: &str,
        params: &Params<'_>,
        objects: Option<&str>,
        address: SocketAddr,
        session: Option<u64>,
        now: Instant,
    ) -> bool {
        let Some(registration) = self.by_id.get_mut(id) else {
            return false;
        };
        if registration.expires() <= now {
            self.remove(id);
            return false;
        }
        if let Some(lt) = params.lifetime_s {
            registration.lifetime_s = lt;
        }
        if let Some(b) = params.binding {
            registration.binding = b.to_string();
        }
        if let Some(objects) = objects {
            registration.objects = cut(objects);
        }
        registration.updated = now;
        registration.session = session;
        if registration.address != address {
            let old = std::mem::replace(&mut registration.address, address);
            if self.by_address.get(&old).map(String::as_str) == Some(id) {
                self.by_address.remove(&old);
            }
            self.by_address.insert(address, id.to_string());
        }
        true
    }

    /// De-registers; false when it is not known.
    pub fn remove(&mut self, id: &str) -> bool {
        let Some(registration) = self.by_id.remove(id) else {
            return false;
        };
        if self
            .by_endpoint
            .get(&registration.endpoint)
            .map(String::as_str)
            == Some(id)
        {
            self.by_endpoint.remove(&registration.endpoint);
        }
        if self
            .by_address
            .get(&registration.address)
            .map(String::as_str)
            == Some(id)
        {
            self.by_address.remove(&registration.address);
        }
        true
    }

    /// The live registration of the endpoint at `address`.
    pub fn at(&self, address: SocketAddr, now: Instant) -> Option<&Registration> {
        let id = self.by_address.get(&address)?;
        self.by_id.get(id).filter(|r| r.expires() > now)
    }

    pub fn get(&self, id: &str) -> Option<&Registration> {
        self.by_id.get(id)
    }

    /// Drops the registrations past their lifetime and grace.
    pub fn expire(&mut self, now: Instant) {
        let gone: Vec<String> = self
            .by_id
            .iter()
            .filter(|(_, r)| r.expires() <= now)
            .map(|(id, _)| id.clone())
            .collect();
        for id in gone {
            self.remove(&id);
        }
    }

    /// A short id nobody can guess from the previous one.
    fn new_id(&mut self) -> String {
        loop {
            self.counter += 1;
            let mut hasher = self.ids.build_hasher();
            hasher.write_u64(self.counter);
            let id = format!("{:012x}", hasher.finish() & 0xffff_ffff_ffff);
            if !self.by_id.contains_key(&id) {
                return id;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([10, 1, 2, 3], port))
    }

    #[test]
    fn endpoint_names_become_meter_ids() {
        assert_eq!(
            meter_id_of("urn:imei:352099001761481").as_deref(),
            Some("imei-352099001761481")
        );
        assert_eq!(meter_id_of("meter-17").as_deref(), Some("meter-17"));
        assert_eq!(
            meter_id_of("urn:dev:ops:32473-Meter-4711").as_deref(),
            Some("dev-ops-32473-Meter-4711")
        );
        assert_eq!(meter_id_of("has space"), None);
        assert_eq!(meter_id_of(""), None);
    }

    #[test]
    fn register_update_send_deregister() {
        let mut r = Registry::new(10);
        let t = Instant::now();
        let params = Params::parse(&["ep=urn:imei:1234", "lt=300", "lwm2m=1.1", "b=U"]).unwrap();
        let id = r
            .register(&params, "</3/0>,</4/0>", addr(1), None, t)
            .unwrap();
        let reg = r.at(addr(1), t).unwrap();
        assert_eq!(
            (reg.meter_id.as_str(), reg.lifetime_s, reg.version.as_str()),
            ("imei-1234", 300, "1.1")
        );
        // An update from a new address (NAT rebinding) moves the endpoint there.
        assert!(r.update(
            &id,
            &Params::default(),
            None,
            addr(2),
            None,
            t + Duration::from_secs(100)
        ));
        assert!(r.at(addr(1), t).is_none());
        assert_eq!(r.at(addr(2), t).unwrap().endpoint, "urn:imei:1234");
        // Past lifetime + grace it is gone.
        let late = t + Duration::from_secs(100 + 300) + GRACE + Duration::from_secs(1);
        assert!(r.at(addr(2), late).is_none());
        assert!(!r.update(&id, &Params::default(), None, addr(2), None, late));
        // Registering again replaces, de-registering removes.
        let id1 = r.register(&params, "", addr(3), None, t).unwrap();
        let id2 = r.register(&params, "", addr(4), None, t).unwrap();
        assert_ne!(id1, id2);
        assert_eq!(r.len(), 1);
        assert!(r.at(addr(3), t).is_none());
        assert!(r.remove(&id2));
        assert!(!r.remove(&id2));
        assert_eq!(r.len(), 0);
    }

    #[test]
    fn bad_registrations_are_refused() {
        let mut r = Registry::new(1);
        let t = Instant::now();
        assert!(matches!(
            r.register(&Params::default(), "", addr(1), None, t),
            Err(RegisterError::Bad(_))
        ));
        assert!(Params::parse(&["ep=a", "lt=soon"]).is_err());
        assert!(
            Params::parse(&["ep=a", "lt=10000000000000000000"]).is_err(),
            "would overflow Instant"
        );
        assert!(Params::parse(&["ep=a", "lt=0"]).is_err());
        let lt = format!("lt={MAX_LIFETIME_S}");
        let long = Params::parse(&["ep=long", &lt]).unwrap();
        let id = r
            .register(&long, &"</3/0>,".repeat(500), addr(9), None, t)
            .unwrap();
        assert!(r.get(&id).unwrap().objects.len() <= MAX_OBJECTS_BYTES);
        assert!(r.get(&id).unwrap().objects.ends_with("</3/0>"));
        r.expire(t + Duration::from_secs(3600)); // no overflow
        assert!(r.remove(&id));
        let bad = Params::parse(&["ep=a b"]).unwrap();
        assert!(matches!(
            r.register(&bad, "", addr(1), None, t),
            Err(RegisterError::Bad(_))
        ));
        let v2 = Params::parse(&["ep=a", "lwm2m=2.0"]).unwrap();
        assert!(matches!(
            r.register(&v2, "", addr(1), None, t),
            Err(RegisterError::Bad(_))
        ));
        r.register(&Params::parse(&["ep=a"]).unwrap(), "", addr(1), None, t)
            .unwrap();
        assert_eq!(
            r.register(&Params::parse(&["ep=b"]).unwrap(), "", addr(2), None, t),
            Err(RegisterError::Full)
        );
    }
}
