//! The device credential store: who may connect, and for which meters it may speak. One store
//! per data folder, shared by every edge (MQTT now; CoAP DTLS-PSK uses the same secrets).
//!
//! On disk: `{data_dir}/credentials/credentials.csv`, a CSV file with the header
//! `meter_id,secret,publish_for,state,dlms_system_title,dlms_ek,dlms_ak,dlms_profile`,
//! readable by the service user only (file 0600, folder 0700). The `dlms_*` columns are a
//! DLMS/COSEM meter's system title (16 hex digits; one meter each), its global unicast
//! encryption and authentication keys (32 hex digits each) and the push profile its
//! values-only pushes are read by; all optional (an earlier store has no such columns). The secret is kept as given, because DTLS-PSK needs the key itself; `publish_for`
//! holds space-separated meter-id globs (`*`, `?`) for gateways that publish on behalf of other
//! meters; `state` is `active` or `revoked`. A revoked id keeps its row without a secret, so a
//! TLS client certificate naming it is refused too. Every change is written whole to a
//! temporary file, fsynced and renamed over the old one, under an exclusive lock on
//! `credentials/lock`, so `meterflow credentials` can run while the server reads the file.
//!
//! In memory, each active entry also keeps the SHA-256 digest of its secret: a password is
//! checked by comparing digests in constant time (no timing leak of the secret or of its
//! length), at a cost of about a microsecond. The secrets are random device keys, not human
//! passwords, so a slow password hash would only make a reconnect storm expensive.
//!
//! Secrets and DLMS keys never appear in `Debug` output, logs or errors.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::path::{Path, PathBuf};

use meterflow_proto::is_valid_meter_id;
use subtle::ConstantTimeEq;

use crate::error::IngestError;

/// The folder under the data folder.
pub const DIR: &str = "credentials";
/// The store file's columns.
const STORE_COLUMNS: [&str; 8] = [
    "meter_id",
    "secret",
    "publish_for",
    "state",
    "dlms_system_title",
    "dlms_ek",
    "dlms_ak",
    "dlms_profile",
];
/// The columns an import file may have (`meter_id` and `secret` required).
const IMPORT_COLUMNS: [&str; 7] = [
    "meter_id",
    "secret",
    "publish_for",
    "dlms_system_title",
    "dlms_ek",
    "dlms_ak",
    "dlms_profile",
];
/// The store file in it.
pub const FILE: &str = "credentials.csv";
/// Shortest secret accepted: 16 characters, at least 96 bits even for a simple alphabet.
pub const MIN_SECRET: usize = 16;
/// Longest secret accepted: 64 bytes, the most DTLS-PSK stacks take as a key.
pub const MAX_SECRET: usize = 64;
/// Globs per gateway at most.
pub const MAX_GLOBS: usize = 64;

/// A device secret. Shown as `(secret)` by `Debug`.
#[derive(Clone)]
pub struct Secret {
    text: Box<str>,
    digest: [u8; 32],
}

impl Secret {
    /// Checks the rules (16 to 64 printable ASCII characters, no spaces).
    pub fn new(text: &str) -> Result<Secret, IngestError> {
        if !(MIN_SECRET..=MAX_SECRET).contains(&text.len())
            || !text.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(IngestError::InvalidSecret {
                min: MIN_SECRET,
                max: MAX_SECRET,
            });
        }
        Ok(Secret {
            digest: sha256(text.as_bytes()),
            text: text.into(),
        })
    }

    /// The key's bytes, as given (DTLS-PSK takes them as the pre-shared key).
    pub fn as_bytes(&self) -> &[u8] {
        self.text.as_bytes()
    }

    /// Whether `offered` is this secret, in time that depends on neither.
    pub fn verify(&self, offered: &[u8]) -> bool {
        sha256(offered).ct_eq(&self.digest).into()
    }
}

/// Spends what [`Secret::verify`] spends, for a name with no secret: the answer's time does
/// not tell which names exist.
pub fn verify_unknown(offered: &[u8]) -> bool {
    let _ = sha256(offered).ct_eq(&[0u8; 32]);
    false
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("(secret)")
    }
}

impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        self.digest.ct_eq(&other.digest).into()
    }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// A new random secret: 128 bits from the system's CSPRNG, as 32 lowercase hex characters.
pub fn generate_secret() -> Result<String, IngestError> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| IngestError::Credentials("the system random source failed".into()))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// A meter-id glob: `*` any run of characters, `?` one character, the rest literal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob(Box<str>);

impl Glob {
    pub fn new(pattern: &str) -> Result<Glob, IngestError> {
        let valid = (1..=64).contains(&pattern.len())
            && pattern.bytes().all(|b| {
                b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'*' | b'?')
            });
        if !valid {
            return Err(IngestError::InvalidGlob(pattern.to_string()));
        }
        Ok(Glob(pattern.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `meter_id` matches, by iterative wildcard matching with one backtrack point:
    /// linear in practice, never exponential.
    pub fn matches(&self, meter_id: &str) -> bool {
        let (p, t) = (self.0.as_bytes(), meter_id.as_bytes());
        let (mut pi, mut ti) = (0, 0);
        let mut star: Option<(usize, usize)> = None;
        while ti < t.len() {
            match p.get(pi) {
                Some(b'*') => {
                    star = Some((pi, ti));
                    pi += 1;
                }
                Some(&c) if c == b'?' || c == t[ti] => {
                    pi += 1;
                    ti += 1;
                }
                _ => match star {
                    Some((sp, st)) => {
                        pi = sp + 1;
                        ti = st + 1;
                        star = Some((sp, st + 1));
                    }
                    None => return false,
                },
            }
        }
        p[pi..].iter().all(|&c| c == b'*')
    }
}

/// One device's credential.
#[derive(Debug, Clone, PartialEq)]
pub struct Credential {
    pub secret: Secret,
    /// Other meters it may publish for (a gateway or data concentrator).
    pub publish_for: Vec<Glob>,
    /// A DLMS/COSEM meter's system title and keys.
    pub dlms: Option<DlmsIdentity>,
}

/// A DLMS/COSEM meter's system title, keys and push profile. The keys are shown as `(key)`
/// by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct DlmsIdentity {
    pub system_title: [u8; 8],
    ek: Option<[u8; 16]>,
    ak: Option<[u8; 16]>,
    /// The encryption key's check value ([`Keys::check_value`](meterflow_decoders::dlms::Keys::check_value)),
    /// made once here: replay counters are kept per key, judged for every push.
    key_check: u32,
    /// The `[[dlms.profile]]` its values-only pushes are read by.
    pub profile: Option<String>,
}

impl fmt::Debug for DlmsIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DlmsIdentity")
            .field("system_title", &hex(&self.system_title))
            .field("ek", &self.ek.map(|_| "(key)"))
            .field("ak", &self.ak.map(|_| "(key)"))
            .field("profile", &self.profile)
            .finish()
    }
}

impl DlmsIdentity {
    /// From the CSV columns or the command line's flags (hex); the error names the column.
    pub fn parse(
        system_title: &str,
        ek: &str,
        ak: &str,
        profile: &str,
    ) -> Result<Option<DlmsIdentity>, String> {
        fn bytes<const N: usize>(text: &str, column: &str) -> Result<Option<[u8; N]>, String> {
            let text = text.trim();
            if text.is_empty() {
                return Ok(None);
            }
            let parsed = (text.len() == 2 * N && text.bytes().all(|b| b.is_ascii_hexdigit()))
                .then(|| {
                    (0..N)
                        .map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok())
                        .collect::<Option<Vec<u8>>>()
                })
                .flatten()
                .and_then(|v| <[u8; N]>::try_from(v).ok());
            match parsed {
                Some(b) => Ok(Some(b)),
                // Never the text itself: it may be a key.
                None => Err(format!("{column} is not {} hex digits", 2 * N)),
            }
        }
        let system_title = bytes::<8>(system_title, "dlms_system_title")?;
        let ek = bytes::<16>(ek, "dlms_ek")?;
        let ak = bytes::<16>(ak, "dlms_ak")?;
        let profile = Some(profile.trim())
            .filter(|p| !p.is_empty())
            .map(String::from);
        match system_title {
            Some(system_title) => {
                if ak.is_some() && ek.is_none() {
                    return Err("dlms_ak without dlms_ek".into());
                }
                let key_check = ek.map_or(0, |ek| {
                    meterflow_decoders::dlms::Keys { ek, ak }.check_value()
                });
                Ok(Some(DlmsIdentity {
                    system_title,
                    ek,
                    ak,
                    key_check,
                    profile,
                }))
            }
            None if ek.is_some() || ak.is_some() || profile.is_some() => Err(
                "dlms_ek, dlms_ak and dlms_profile need dlms_system_title (the meter's 8 bytes)"
                    .into(),
            ),
            None => Ok(None),
        }
    }

    /// The check value of its encryption key (0 without one): what its replay counters are
    /// kept under.
    pub fn key_check(&self) -> u32 {
        self.key_check
    }

    /// The keys a ciphered push of this meter is opened with (`None`: it has none).
    pub fn keys(&self) -> Option<meterflow_decoders::dlms::Keys> {
        self.ek
            .map(|ek| meterflow_decoders::dlms::Keys { ek, ak: self.ak })
    }

    /// The CSV columns, as written to the store.
    fn columns(&self) -> [String; 4] {
        [
            hex(&self.system_title),
            self.ek.map(|k| hex(&k)).unwrap_or_default(),
            self.ak.map(|k| hex(&k)).unwrap_or_default(),
            self.profile.clone().unwrap_or_default(),
        ]
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

/// What `add` or `import` did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Changes {
    pub added: usize,
    pub updated: usize,
    pub unchanged: usize,
}

/// The whole store, as read from its file.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CredentialStore {
    active: BTreeMap<Box<str>, Credential>,
    revoked: BTreeSet<Box<str>>,
    /// The meter of each DLMS system title.
    by_system_title: BTreeMap<[u8; 8], Box<str>>,
}

impl CredentialStore {
    /// The store file of `data_dir`.
    pub fn path(data_dir: &Path) -> PathBuf {
        data_dir.join(DIR).join(FILE)
    }

    /// Reads the store; an absent file is an empty store.
    pub fn load(data_dir: &Path) -> Result<CredentialStore, IngestError> {
        let path = Self::path(data_dir);
        match File::open(&path) {
            Ok(file) => Self::read_store(file, &path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(source) => Err(IngestError::Io {
                action: "reading the credential store",
                path,
                source,
            }),
        }
    }

    /// Entries that can authenticate.
    pub fn len(&self) -> usize {
        self.active.len()
    }

    /// No entry can authenticate: anonymous devices may be allowed (see `mqtt.allow_anonymous`).
    pub fn is_empty(&self) -> bool {
        self.active.is_empty()
    }

    pub fn get(&self, meter_id: &str) -> Option<&Credential> {
        self.active.get(meter_id)
    }

    pub fn is_revoked(&self, meter_id: &str) -> bool {
        self.revoked.contains(meter_id)
    }

    /// Active meters with DLMS keys but no authentication key (`dlms_ak`): their pushes carry
    /// no tag, so nothing tells a push altered on the way from one of theirs.
    pub fn dlms_meters_without_ak(&self) -> usize {
        self.active
            .values()
            .filter_map(|c| c.dlms.as_ref()?.keys())
            .filter(|k| k.ak.is_none())
            .count()
    }

    /// The (active) meter whose DLMS system title this is.
    pub fn meter_of_system_title(&self, system_title: &[u8; 8]) -> Option<&str> {
        self.by_system_title.get(system_title).map(|m| &**m)
    }

    /// Rebuilds the system-title index; two meters with one system title are an error
    /// naming both.
    fn index(&mut self) -> Result<(), IngestError> {
        let mut by = BTreeMap::new();
        for (id, c) in &self.active {
            if let Some(d) = &c.dlms {
                if let Some(other) = by.insert(d.system_title, id.clone()) {
                    return Err(IngestError::Credentials(format!(
                        "meters {other} and {id} have the same dlms_system_title {}: a system title \
                         belongs to one meter",
                        hex(&d.system_title)
                    )));
                }
            }
        }
        self.by_system_title = by;
        Ok(())
    }

    /// Ids that were active here and are gone or changed in `newer`: their live sessions
    /// must be closed.
    pub fn withdrawn_in<'a>(&'a self, newer: &'a CredentialStore) -> Vec<&'a str> {
        self.active
            .iter()
            .filter(|(id, old)| newer.active.get(*id) != Some(*old))
            .map(|(id, _)| &**id)
            .collect()
    }

    /// The active meters that name a DLMS push profile, with its name, in id order.
    pub fn dlms_profiles(&self) -> impl Iterator<Item = (&str, &str)> {
        self.active.iter().filter_map(|(id, c)| {
            let name = c.dlms.as_ref()?.profile.as_deref()?;
            Some((&**id, name))
        })
    }

    /// Every id with its globs and whether it is active, in id order (no secrets).
    pub fn list(&self) -> Vec<(&str, &[Glob], bool)> {
        let mut all: Vec<(&str, &[Glob], bool)> = self
            .active
            .iter()
            .map(|(id, c)| (&**id, c.publish_for.as_slice(), true))
            .chain(self.revoked.iter().map(|id| (&**id, &[][..], false)))
            .collect();
        all.sort_by(|a, b| a.0.cmp(b.0));
        all
    }

    /// Adds or replaces one credential (a revoked id becomes active again).
    pub fn add(&mut self, meter_id: &str, credential: Credential) -> Result<Changes, IngestError> {
        if !is_valid_meter_id(meter_id) {
            return Err(IngestError::InvalidMeterId(meter_id.to_string()));
        }
        let mut changes = Changes::default();
        if let Some(d) = &credential.dlms {
            if let Some(other) = self
                .by_system_title
                .get(&d.system_title)
                .filter(|o| &***o != meter_id)
            {
                return Err(IngestError::Credentials(format!(
                    "meters {other} and {meter_id} have the same dlms_system_title {}: a system \
                     title belongs to one meter",
                    hex(&d.system_title)
                )));
            }
        }
        let old = self.active.insert(meter_id.into(), credential.clone());
        if let Some(d) = old.as_ref().and_then(|o| o.dlms.as_ref()) {
            self.by_system_title.remove(&d.system_title);
        }
        if let Some(d) = &credential.dlms {
            self.by_system_title.insert(d.system_title, meter_id.into());
        }
        self.revoked.remove(meter_id);
        match old {
            None => changes.added += 1,
            Some(old) if old == credential => changes.unchanged += 1,
            Some(_) => changes.updated += 1,
        }
        Ok(changes)
    }

    /// Revokes one id: its secret is forgotten and a certificate naming it is refused.
    /// Returns false when the id was not active.
    pub fn revoke(&mut self, meter_id: &str) -> bool {
        let was = self.active.remove(meter_id).is_some();
        if was || is_valid_meter_id(meter_id) {
            self.revoked.insert(meter_id.into());
        }
        self.by_system_title.retain(|_, m| &**m != meter_id);
        was
    }

    /// Reads an import file (header `meter_id,secret` and optionally `publish_for`) and adds
    /// every row. Nothing is added unless every row is valid; the error lists the bad lines.
    pub fn import_csv(&mut self, input: impl Read, name: &str) -> Result<Changes, IngestError> {
        let rows = parse_rows(input, name, false)?;
        let mut changes = Changes::default();
        for (id, credential, _) in rows {
            let c = self
                .add(&id, credential)
                .map_err(|e| IngestError::Credentials(format!("{name}: {e}")))?;
            changes.added += c.added;
            changes.updated += c.updated;
            changes.unchanged += c.unchanged;
        }
        Ok(changes)
    }

    fn read_store(input: impl Read, path: &Path) -> Result<CredentialStore, IngestError> {
        let mut store = CredentialStore::default();
        for (id, credential, active) in parse_rows(input, &path.display().to_string(), true)? {
            if active {
                store.active.insert(id.into(), credential);
            } else {
                store.revoked.insert(id.into());
            }
        }
        store
            .index()
            .map_err(|e| IngestError::Credentials(format!("{}: {e}", path.display())))?;
        Ok(store)
    }

    /// Writes the store (temporary file, fsync, rename, fsync of the folder), owner-only.
    pub fn save(&self, data_dir: &Path) -> Result<(), IngestError> {
        let dir = create_private_dir(data_dir)?;
        let path = dir.join(FILE);
        let tmp = dir.join(format!("{FILE}.tmp"));
        let io = |action, source| IngestError::Io {
            action,
            path: path.clone(),
            source,
        };
        let file = private_file(&tmp).map_err(|e| io("creating", e))?;
        let mut out = csv::Writer::from_writer(std::io::BufWriter::new(file));
        let csv_error = |e: csv::Error| IngestError::Credentials(format!("writing {FILE}: {e}"));
        out.write_record(STORE_COLUMNS).map_err(csv_error)?;
        for (id, globs, active) in self.list() {
            let credential = self.active.get(id);
            let secret = credential.map_or("", |c| &c.secret.text);
            let globs: Vec<&str> = globs.iter().map(Glob::as_str).collect();
            let state = if active { "active" } else { "revoked" };
            let dlms = credential
                .and_then(|c| c.dlms.as_ref())
                .map(DlmsIdentity::columns)
                .unwrap_or_default();
            out.write_record([
                id,
                secret,
                &globs.join(" "),
                state,
                &dlms[0],
                &dlms[1],
                &dlms[2],
                &dlms[3],
            ])
            .map_err(csv_error)?;
        }
        let buffered = out
            .into_inner()
            .map_err(|e| io("writing", std::io::Error::other(e.to_string())))?;
        let file = buffered
            .into_inner()
            .map_err(|e| io("writing", std::io::Error::other(e.to_string())))?;
        file.sync_all().map_err(|e| io("syncing", e))?;
        fs::rename(&tmp, &path).map_err(|e| io("renaming", e))?;
        File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io("syncing the folder of", e))?;
        Ok(())
    }
}

/// Parses CSV rows into credentials; `store` reads the store's own file (with `state`).
fn parse_rows(
    input: impl Read,
    name: &str,
    store: bool,
) -> Result<Vec<(String, Credential, bool)>, IngestError> {
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .comment(Some(b'#'))
        .from_reader(input);
    let headers = reader
        .headers()
        .map_err(|e| IngestError::Credentials(format!("{name}: reading the header: {e}")))?
        .clone();
    let column = |wanted: &str| headers.iter().position(|h| h == wanted);
    let allowed: &[&str] = if store {
        &STORE_COLUMNS
    } else {
        &IMPORT_COLUMNS
    };
    if let Some(unknown) = headers.iter().find(|h| !allowed.contains(h)) {
        return Err(IngestError::Credentials(format!(
            "{name}: unknown column {unknown:?} (the header is {})",
            allowed.join(",")
        )));
    }
    let (Some(id_col), Some(secret_col)) = (column("meter_id"), column("secret")) else {
        return Err(IngestError::Credentials(format!(
            "{name}: the header must name the columns meter_id and secret (and optionally publish_for)"
        )));
    };
    let (globs_col, state_col) = (column("publish_for"), column("state"));
    let dlms_cols = [
        column("dlms_system_title"),
        column("dlms_ek"),
        column("dlms_ak"),
        column("dlms_profile"),
    ];
    let mut rows = Vec::new();
    let mut errors = Vec::new();
    let mut seen = BTreeSet::new();
    for record in reader.records() {
        let record = match record {
            Ok(r) => r,
            Err(e) => {
                errors.push(e.to_string());
                continue;
            }
        };
        let line = record.position().map_or(0, |p| p.line());
        let field = |col: Option<usize>| col.and_then(|c| record.get(c)).unwrap_or("");
        let id = field(Some(id_col));
        let active = match field(state_col) {
            "" | "active" => true,
            "revoked" => false,
            other => {
                errors.push(format!(
                    "line {line}: state {other:?} is not active or revoked"
                ));
                continue;
            }
        };
        let parsed = (|| {
            if !is_valid_meter_id(id) {
                return Err(format!(
                    "meter_id {id:?} must be 1 to 64 characters of [A-Za-z0-9._-]"
                ));
            }
            if !seen.insert(id.to_string()) {
                return Err(format!("meter_id {id} appears twice"));
            }
            let globs = field(globs_col)
                .split_whitespace()
                .map(Glob::new)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| e.to_string())?;
            if globs.len() > MAX_GLOBS {
                return Err(format!("more than {MAX_GLOBS} publish_for globs"));
            }
            // A revoked row has no secret; give it a placeholder that can never be offered.
            let secret = if active {
                Secret::new(field(Some(secret_col))).map_err(|e| e.to_string())?
            } else {
                Secret {
                    text: "".into(),
                    digest: [0; 32],
                }
            };
            let [st, ek, ak, profile] = dlms_cols.map(field);
            let dlms = DlmsIdentity::parse(st, ek, ak, profile)?;
            Ok(Credential {
                secret,
                publish_for: globs,
                dlms,
            })
        })();
        match parsed {
            Ok(credential) => rows.push((id.to_string(), credential, active)),
            Err(e) => errors.push(format!("line {line}: {e}")),
        }
    }
    if !errors.is_empty() {
        let shown: Vec<&str> = errors.iter().take(10).map(String::as_str).collect();
        let more = errors.len().saturating_sub(shown.len());
        return Err(IngestError::Credentials(format!(
            "{name}: {} bad row(s), nothing changed: {}{}",
            errors.len(),
            shown.join("; "),
            if more > 0 {
                format!("; and {more} more")
            } else {
                String::new()
            }
        )));
    }
    Ok(rows)
}

/// `{data_dir}/credentials`, created owner-only (0700), or made so.
fn create_private_dir(data_dir: &Path) -> Result<PathBuf, IngestError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let dir = data_dir.join(DIR);
    let io = |action, source| IngestError::Io {
        action,
        path: dir.clone(),
        source,
    };
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(|e| io("creating", e))?;
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))
        .map_err(|e| io("restricting", e))?;
    Ok(dir)
}

fn private_file(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    // A file left by an earlier run keeps its mode when opened: make it owner-only.
    file.set_permissions(fs::Permissions::from_mode(0o600))?;
    Ok(file)
}

/// Runs `change` on the store of `data_dir` under the store's exclusive lock and saves it when
/// `change` says so: two `meterflow credentials` commands at once do not lose each other's
/// work.
pub fn update<T>(
    data_dir: &Path,
    change: impl FnOnce(&mut CredentialStore) -> Result<(T, bool), IngestError>,
) -> Result<T, IngestError> {
    let dir = create_private_dir(data_dir)?;
    let lock_path = dir.join("lock");
    let lock = private_file_keep(&lock_path).map_err(|source| IngestError::Io {
        action: "opening",
        path: lock_path.clone(),
        source,
    })?;
    lock.lock().map_err(|source| IngestError::Io {
        action: "locking",
        path: lock_path,
        source,
    })?;
    let mut store = CredentialStore::load(data_dir)?;
    let (out, changed) = change(&mut store)?;
    if changed {
        store.save(data_dir)?;
    }
    Ok(out)
}

fn private_file_keep(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
}

/// The store a running server uses, re-read when its file changes.
pub struct SharedCredentials {
    data_dir: PathBuf,
    current: std::sync::RwLock<std::sync::Arc<CredentialStore>>,
    seen: std::sync::Mutex<Option<(u64, u64, i64, i64)>>,
    /// Bumped at every swap, before the sessions it withdraws are closed: a connection that
    /// authenticated against an older store checks again (see the MQTT edge's `open`).
    generation: std::sync::atomic::AtomicU64,
}

impl SharedCredentials {
    pub fn load(data_dir: &Path) -> Result<SharedCredentials, IngestError> {
        let seen = fingerprint(data_dir);
        let store = CredentialStore::load(data_dir)?;
        Ok(SharedCredentials {
            data_dir: data_dir.to_path_buf(),
            current: std::sync::RwLock::new(std::sync::Arc::new(store)),
            seen: std::sync::Mutex::new(seen),
            generation: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// A store that is never re-read (tests, the fuzz targets).
    pub fn in_memory(store: CredentialStore) -> SharedCredentials {
        SharedCredentials {
            data_dir: PathBuf::new(),
            current: std::sync::RwLock::new(std::sync::Arc::new(store)),
            seen: std::sync::Mutex::new(None),
            generation: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// The store in effect.
    pub fn current(&self) -> std::sync::Arc<CredentialStore> {
        self.current_with_generation().0
    }

    /// The store in effect and its generation.
    pub fn current_with_generation(&self) -> (std::sync::Arc<CredentialStore>, u64) {
        let current = self.current.read().unwrap_or_else(|p| p.into_inner());
        let generation = self.generation.load(std::sync::atomic::Ordering::Acquire);
        (current.clone(), generation)
    }

    /// The generation of the store in effect.
    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Re-reads the file if it changed since the last look: the stores before and after. A
    /// file that does not read keeps the store in effect (the error is logged).
    pub fn reload_if_changed(
        &self,
    ) -> Option<(
        std::sync::Arc<CredentialStore>,
        std::sync::Arc<CredentialStore>,
    )> {
        let now = fingerprint(&self.data_dir);
        {
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            if *seen == now {
                return None;
            }
            *seen = now;
        }
        match CredentialStore::load(&self.data_dir) {
            Ok(store) => {
                let new = std::sync::Arc::new(store);
                let mut current = self.current.write().unwrap_or_else(|p| p.into_inner());
                let old = std::mem::replace(&mut *current, new.clone());
                self.generation
                    .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
                Some((old, new))
            }
            Err(e) => {
                tracing::error!(error = %e, "the credential store changed but does not read; the previous one stays in effect");
                None
            }
        }
    }
}

/// What identifies the file's version: a change to it (a rename by `update`) changes this.
pub fn fingerprint(data_dir: &Path) -> Option<(u64, u64, i64, i64)> {
    use std::os::unix::fs::MetadataExt;
    let m = fs::metadata(CredentialStore::path(data_dir)).ok()?;
    Some((m.ino(), m.len(), m.mtime(), m.mtime_nsec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cred(secret: &str, globs: &[&str]) -> Credential {
        Credential {
            secret: Secret::new(secret).unwrap(),
            publish_for: globs.iter().map(|g| Glob::new(g).unwrap()).collect(),
            dlms: None,
        }
    }

    #[test]
    fn globs_match_like_shell_patterns() {
        let cases = [
            ("E00*", "E0012", true),
            ("E00*", "E01", false),
            ("*", "anything", true),
            ("E??1", "E001", true),
            ("E??1", "E0011", false),
            ("*-gas", "sim-1-gas", true),
            ("*-gas", "sim-1-gas2", false),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyy", false),
            ("GW1-*-*", "GW1-a-b", true),
            ("exact", "exact", true),
            ("exact", "exactly", false),
        ];
        for (glob, id, want) in cases {
            assert_eq!(Glob::new(glob).unwrap().matches(id), want, "{glob} {id}");
        }
        assert!(Glob::new("a/b").is_err());
        assert!(Glob::new("").is_err());
        // No exponential backtracking on hostile patterns.
        let g = Glob::new(&"*a".repeat(30)).unwrap();
        assert!(!g.matches(&"a".repeat(29)));
    }

    #[test]
    fn a_secret_verifies_only_itself_and_never_prints() {
        let s = Secret::new("0123456789abcdef").unwrap();
        assert!(s.verify(b"0123456789abcdef"));
        assert!(!s.verify(b"0123456789abcdeF"));
        assert!(!s.verify(b"0123456789abcde"));
        assert!(!s.verify(b""));
        assert!(!format!("{:?}", cred("0123456789abcdef", &[])).contains("0123"));
        assert!(Secret::new("short").is_err());
        assert!(Secret::new("with a space in it!").is_err());
        assert!(Secret::new(&"x".repeat(65)).is_err());
        let generated = generate_secret().unwrap();
        assert_eq!(generated.len(), 32);
        assert!(Secret::new(&generated).is_ok());
        assert_ne!(generated, generate_secret().unwrap());
    }

    #[test]
    fn import_add_revoke_and_save_round_trip_with_private_files() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let csv = "meter_id,secret,publish_for\n\
                   E0001,aaaaaaaaaaaaaaaa,\n\
                   GW-1,bbbbbbbbbbbbbbbb,E1* G2??\n\
                   # a comment line\n\
                   \"E0002\",\"cccccccccccccccc\",\n";
        let changes = update(dir.path(), |store| {
            let c = store.import_csv(csv.as_bytes(), "fleet.csv")?;
            Ok((c, true))
        })
        .unwrap();
        assert_eq!(
            changes,
            Changes {
                added: 3,
                ..Changes::default()
            }
        );
        let store = CredentialStore::load(dir.path()).unwrap();
        assert_eq!(store.len(), 3);
        assert!(store
            .get("E0001")
            .unwrap()
            .secret
            .verify(b"aaaaaaaaaaaaaaaa"));
        let gw = crate::edge::Identity::device("GW-1", &store);
        assert!(gw.may_publish_for("E123"));
        assert!(gw.may_publish_for("G200"));
        let meta = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(meta(&dir.path().join(DIR)), 0o700);
        assert_eq!(meta(&CredentialStore::path(dir.path())), 0o600);

        // Revoke: gone from the active set, remembered as revoked, and saved that way.
        update(dir.path(), |s| Ok(((), s.revoke("E0001")))).unwrap();
        let after = CredentialStore::load(dir.path()).unwrap();
        assert!(after.get("E0001").is_none());
        assert!(after.is_revoked("E0001"));
        assert_eq!(store.withdrawn_in(&after), vec!["E0001"]);
        let text = fs::read_to_string(CredentialStore::path(dir.path())).unwrap();
        assert!(
            !text.contains("aaaaaaaaaaaaaaaa"),
            "a revoked secret is forgotten"
        );
        // Adding it again makes it active with the new secret; the old one fails.
        update(dir.path(), |s| {
            let c = s.add("E0001", cred("dddddddddddddddd", &[]))?;
            Ok((c, true))
        })
        .unwrap();
        let again = CredentialStore::load(dir.path()).unwrap();
        assert!(!again.is_revoked("E0001"));
        assert!(!again
            .get("E0001")
            .unwrap()
            .secret
            .verify(b"aaaaaaaaaaaaaaaa"));
        let listed: Vec<(&str, bool)> = again.list().iter().map(|(i, _, a)| (*i, *a)).collect();
        assert_eq!(
            listed,
            vec![("E0001", true), ("E0002", true), ("GW-1", true)]
        );
    }

    #[test]
    fn a_bad_import_changes_nothing_and_names_its_lines() {
        let mut store = CredentialStore::default();
        let csv = "meter_id,secret\nok-1,aaaaaaaaaaaaaaaa\nbad/id,aaaaaaaaaaaaaaaa\nok-2,short\nok-1,bbbbbbbbbbbbbbbb\n";
        let e = store
            .import_csv(csv.as_bytes(), "f.csv")
            .unwrap_err()
            .to_string();
        assert!(e.contains("3 bad row(s)"), "{e}");
        assert!(
            e.contains("line 3") && e.contains("line 4") && e.contains("line 5"),
            "{e}"
        );
        assert!(
            !e.contains("aaaaaaaaaaaaaaaa") && !e.contains("short"),
            "no secret in errors: {e}"
        );
        assert!(store.is_empty());
        let e = store
            .import_csv("id,secret\nx,aaaaaaaaaaaaaaaa\n".as_bytes(), "f.csv")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown column \"id\""), "{e}");
    }

    #[test]
    fn dlms_columns_are_read_checked_and_written_without_showing_keys() {
        let dir = tempfile::tempdir().unwrap();
        let csv = "meter_id,secret,dlms_system_title,dlms_ek,dlms_ak,dlms_profile\n\
                   E1,0123456789abcdef0,4B464D1010000023,101112131415161718191A1B1C1D1E1F,,\n\
                   E2,0123456789abcdef0,,,,\n";
        let mut store = CredentialStore::default();
        store.import_csv(csv.as_bytes(), "keys.csv").unwrap();
        let title = [0x4B, 0x46, 0x4D, 0x10, 0x10, 0x00, 0x00, 0x23];
        assert_eq!(store.meter_of_system_title(&title), Some("E1"));
        let keys = store
            .get("E1")
            .unwrap()
            .dlms
            .as_ref()
            .unwrap()
            .keys()
            .unwrap();
        assert_eq!(keys.ek[0], 0x10);
        assert_eq!(keys.ak, None);
        assert!(store.get("E2").unwrap().dlms.is_none());
        let shown = format!("{:?}", store);
        assert!(
            !shown.contains("1011121314") && !shown.contains("101112"),
            "{shown}"
        );
        // Written and read back: the same store.
        store.save(dir.path()).unwrap();
        let text = std::fs::read_to_string(CredentialStore::path(dir.path())).unwrap();
        assert!(text.starts_with(
            "meter_id,secret,publish_for,state,dlms_system_title,dlms_ek,dlms_ak,dlms_profile"
        ));
        assert_eq!(CredentialStore::load(dir.path()).unwrap(), store);
        // A system title belongs to one meter: a second one is refused, naming both, and the
        // store is as it was.
        let mut twice = cred("0123456789abcdef0", &[]);
        twice.dlms = DlmsIdentity::parse("4B464D1010000023", "", "", "").unwrap();
        let e = store.add("E3", twice).unwrap_err().to_string();
        assert!(e.contains("E1") && e.contains("E3"), "{e}");
        assert!(store.get("E3").is_none());
        assert_eq!(store.meter_of_system_title(&title), Some("E1"));
        // Revoked: its system title is no one's.
        store.revoke("E1");
        assert_eq!(store.meter_of_system_title(&title), None);
        // Bad columns are named, never echoed.
        for (st, ek, ak, why) in [
            ("4B464D10", "", "", "dlms_system_title"),
            ("4B464D1010000023", "SECRETSECRET", "", "dlms_ek"),
            (
                "4B464D1010000023",
                "",
                "101112131415161718191A1B1C1D1E1F",
                "dlms_ak without",
            ),
            (
                "",
                "101112131415161718191A1B1C1D1E1F",
                "",
                "need dlms_system_title",
            ),
        ] {
            let e = DlmsIdentity::parse(st, ek, ak, "").unwrap_err();
            assert!(e.contains(why) && !e.contains("SECRET"), "{e}");
        }
    }
}
