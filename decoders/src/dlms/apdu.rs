//! The APDUs of a push (IEC 62056-5-3) and security suite 0/1 (AES-GCM-128):
//!
//! - general-block-transfer (`E0`): blocks joined in order until the last, then read again;
//! - general-glo-ciphering (`DB`): system title, security control, invocation counter,
//!   ciphertext and a 12-byte tag; opened with the keys of that system title (general-ded-
//!   ciphering, `DC`, is refused: its dedicated key belongs to an association, not a push). IV = system title ‖ invocation counter. Security control 0x30: encrypted
//!   and authenticated (AAD = SC ‖ AK); 0x10: authenticated only (AAD = SC ‖ AK ‖ the data in
//!   clear); 0x20: encrypted only (AES-CTR from the IV's counter 2, no tag); 0x00: in clear.
//!   The low nibble is the suite: 0 and 1 are both AES-GCM-128 here;
//! - DataNotification (`0F`): long-invoke-id-and-priority, an optional date-time, the body;
//! - a DSMR P1 telegram (text starting `/`) inside ciphering: encrypted P1 (Luxembourg
//!   Smarty, Austrian T210-D), handed to the DSMR decoder.

use aes::cipher::{KeyIvInit, StreamCipher};
use aes_gcm::aead::consts::U12;
use aes_gcm::aead::AeadInPlace;
use aes_gcm::{AesGcm, KeyInit, Nonce, Tag};

use super::axdr::{Data, Reader};
use super::{malformed, refused, unsupported, Refusal};
use crate::DecodeError;

/// AES-128-GCM with DLMS's 12-byte tag.
type Aes128Gcm12 = AesGcm<aes::Aes128, U12, U12>;
/// AES-128 in counter mode with a 32-bit big-endian counter (GCM's, without the tag).
type Aes128Ctr = ctr::Ctr32BE<aes::Aes128>;

/// The length of a DLMS GCM tag.
pub const TAG_LEN: usize = 12;

/// A meter's keys: the encryption key (global unicast) and the authentication key.
#[derive(Clone, PartialEq, Eq)]
pub struct Keys {
    pub ek: [u8; 16],
    pub ak: Option<[u8; 16]>,
}

impl Keys {
    /// The encryption key's check value (the first four bytes of the key applied to a block
    /// of zeros, as key custodians compare keys without showing them): tells one key from
    /// another where the key itself must not be kept, as beside a replay counter, whose count
    /// starts again with a new key.
    pub fn check_value(&self) -> u32 {
        use aes::cipher::BlockEncrypt;
        let cipher = aes::Aes128::new(&self.ek.into());
        let mut block = [0u8; 16].into();
        cipher.encrypt_block(&mut block);
        u32::from_be_bytes([block[0], block[1], block[2], block[3]])
    }
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the keys themselves.
        f.debug_struct("Keys")
            .field("ek", &"(set)")
            .field("ak", &self.ak.map(|_| "(set)"))
            .finish()
    }
}

/// What the key store knows of a system title.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyLookup {
    Keys(Keys),
    /// The system title belongs to a meter that has no key.
    NoKey,
    /// No meter has this system title.
    Unknown,
    /// The system title is not one the push may carry (it belongs to another meter than the
    /// one the push was sent for): why.
    Forbidden(String),
}

/// The ciphering a push came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Security {
    pub system_title: [u8; 8],
    /// The security control byte.
    pub control: u8,
    pub invocation_counter: u32,
    /// `DB` (global key) or `DC` (dedicated key).
    pub tag: u8,
}

impl Security {
    /// The manufacturer's three letters, the first three bytes of the system title.
    pub fn manufacturer(&self) -> Option<&str> {
        std::str::from_utf8(&self.system_title[..3])
            .ok()
            .filter(|s| s.bytes().all(|b| b.is_ascii_alphanumeric()))
    }
}

/// What a push's APDU holds once opened.
#[derive(Debug, Clone, PartialEq)]
pub enum Content {
    /// A DataNotification's bytes (tag `0F` first).
    Notification(Vec<u8>),
    /// A DSMR telegram.
    Dsmr(Vec<u8>),
}

/// A push's APDU, opened.
#[derive(Debug, Clone, PartialEq)]
pub struct Opened {
    pub security: Option<Security>,
    pub content: Content,
    /// General-block-transfer blocks joined.
    pub blocks: usize,
}

/// Opens `apdu` (at `base` in the payload): blocks joined, ciphering removed with the keys
/// `keys` gives for the system title.
pub fn open(
    apdu: &[u8],
    base: usize,
    keys: &dyn Fn(&[u8; 8]) -> KeyLookup,
) -> Result<Opened, DecodeError> {
    let mut bytes = apdu.to_vec();
    let mut blocks = 0;
    let mut security = None;
    // At most: blocks, then ciphering, then the notification.
    for _ in 0..3 {
        match bytes.first() {
            Some(0xE0) if blocks == 0 && security.is_none() => {
                let (joined, n) = join_blocks(&bytes, base)?;
                bytes = joined;
                blocks = n;
            }
            Some(0xDC) => {
                return Err(unsupported(
                    base,
                    "general-ded-ciphering: its dedicated key belongs to an association; pushes are read in general-glo-ciphering (0xDB)",
                ))
            }
            Some(&tag @ 0xDB) if security.is_none() => {
                let (s, plain) = decipher(&bytes, base, tag, keys)?;
                security = Some(s);
                bytes = plain;
            }
            Some(0x0F) => {
                return Ok(Opened {
                    security,
                    content: Content::Notification(bytes),
                    blocks,
                })
            }
            Some(b'/') if security.is_some() => {
                return Ok(Opened {
                    security,
                    content: Content::Dsmr(bytes),
                    blocks,
                })
            }
            Some(&other) => {
                return Err(unsupported(
                    base,
                    format!("APDU tag 0x{other:02X} (a push is a DataNotification, 0x0F, maybe ciphered or in blocks)"),
                ))
            }
            None => return Err(malformed(base, "an empty APDU")),
        }
    }
    Err(unsupported(
        base,
        "ciphering or block transfer nested in itself",
    ))
}

/// The data of consecutive general-block-transfer APDUs up to the one marked last.
fn join_blocks(bytes: &[u8], base: usize) -> Result<(Vec<u8>, usize), DecodeError> {
    let mut r = Reader::new(bytes, base);
    let mut out = Vec::new();
    let mut expected = None;
    let mut n = 0;
    loop {
        let at = r.offset();
        if r.u8("a block transfer's tag")? != 0xE0 {
            return Err(malformed(at, "a general-block-transfer APDU (E0) was due"));
        }
        let control = r.u8("a block's control")?;
        let number = r.u16("a block's number")?;
        r.u16("a block's acknowledged number")?;
        let len = r.length("a block's length")?;
        let data = r.take(len, "a block's data")?;
        if let Some(want) = expected {
            if number != want {
                return Err(malformed(
                    at,
                    format!("block {number} where {want} was due"),
                ));
            }
        }
        expected = Some(number.wrapping_add(1));
        out.extend_from_slice(data);
        n += 1;
        if control & 0x80 != 0 {
            break;
        }
        if r.is_empty() {
            return Err(malformed(
                r.offset(),
                "the blocks end before the one marked last",
            ));
        }
    }
    if !r.is_empty() {
        return Err(malformed(r.offset(), "bytes after the last block"));
    }
    Ok((out, n))
}

/// Removes the ciphering of a `DB`/`DC` APDU (`bytes` starts with its tag `tag`): the
/// security header and the content, deciphered and its tag checked.
pub fn decipher(
    bytes: &[u8],
    base: usize,
    tag: u8,
    keys: &dyn Fn(&[u8; 8]) -> KeyLookup,
) -> Result<(Security, Vec<u8>), DecodeError> {
    let mut r = Reader::new(bytes, base);
    r.u8("the ciphering tag")?;
    let st_at = r.offset();
    let st_len = r.length("the system title's length")?;
    if st_len != 8 {
        return Err(malformed(
            st_at,
            format!("a system title of {st_len} bytes, not 8"),
        ));
    }
    let system_title = *r.array::<8>("the system title")?;
    let len_at = r.offset();
    let len = r.length("the ciphered content's length")?;
    if len != r.remaining() {
        return Err(malformed(
            len_at,
            format!(
                "the ciphered content states {len} bytes, {} follow",
                r.remaining()
            ),
        ));
    }
    let sc_at = r.offset();
    let control = r.u8("the security control")?;
    let invocation_counter = r.u32("the invocation counter")?;
    let security = Security {
        system_title,
        control,
        invocation_counter,
        tag,
    };
    let authenticated = control & 0x10 != 0;
    let encrypted = control & 0x20 != 0;
    let rest = r.rest();
    let lookup = keys(&system_title);
    // Whatever its security: a system title must be its meter's, and some meter's.
    match lookup {
        KeyLookup::Forbidden(why) => return Err(refused(Refusal::Unauthorized, why)),
        KeyLookup::Unknown => {
            return Err(refused(
                Refusal::UnknownSystemTitle,
                format!("system title {} belongs to no meter", hex(&system_title)),
            ))
        }
        _ => {}
    }
    // What cannot be read is said after whose it is (a push of another meter's title is
    // `unauthorized` whatever its suite).
    let suite = control & 0x0F;
    if suite > 1 {
        return Err(unsupported(
            sc_at,
            format!("security suite {suite} (0 and 1 are read)"),
        ));
    }
    if control & 0x80 != 0 {
        return Err(unsupported(sc_at, "compressed content"));
    }
    // Key set 1: the broadcast key, shared by many meters, is not a meter's own; only the
    // unicast key of the credential store opens pushes.
    if control & 0x40 != 0 && control & 0x30 != 0 {
        return Err(unsupported(
            sc_at,
            format!("security control 0x{control:02X}: ciphered under the broadcast key (key set 1); pushes are opened with the meter's unicast key only"),
        ));
    }
    if !authenticated && !encrypted {
        return Ok((security, rest.to_vec()));
    }
    let keys = match lookup {
        KeyLookup::Keys(k) => k,
        KeyLookup::NoKey => {
            return Err(refused(
                Refusal::NoKey,
                format!("system title {} has no key", hex(&system_title)),
            ))
        }
        KeyLookup::Unknown => {
            return Err(refused(
                Refusal::UnknownSystemTitle,
                format!("system title {} belongs to no meter", hex(&system_title)),
            ))
        }
        KeyLookup::Forbidden(why) => return Err(refused(Refusal::Unauthorized, why)),
    };
    let mut iv = [0u8; 12];
    iv[..8].copy_from_slice(&system_title);
    iv[8..].copy_from_slice(&invocation_counter.to_be_bytes());
    if !authenticated {
        // Encrypted only: GCM's keystream, counter 2 onwards.
        let mut counter = [0u8; 16];
        counter[..12].copy_from_slice(&iv);
        counter[15] = 2;
        let mut plain = rest.to_vec();
        Aes128Ctr::new(&keys.ek.into(), &counter.into()).apply_keystream(&mut plain);
        return Ok((security, plain));
    }
    let Some(ak) = keys.ak else {
        return Err(refused(
            Refusal::NoKey,
            format!(
                "system title {} has no authentication key (security control 0x{control:02X})",
                hex(&system_title)
            ),
        ));
    };
    if rest.len() < TAG_LEN {
        return Err(malformed(
            sc_at + 5,
            "the ciphered content is shorter than its tag",
        ));
    }
    let (data, tag_bytes) = rest.split_at(rest.len() - TAG_LEN);
    let cipher = Aes128Gcm12::new(&keys.ek.into());
    let nonce = Nonce::<U12>::from_slice(&iv);
    let tag = Tag::<U12>::from_slice(tag_bytes);
    let mut aad = Vec::with_capacity(17 + if encrypted { 0 } else { data.len() });
    aad.push(control);
    aad.extend_from_slice(&ak);
    let failed = || {
        refused(
            Refusal::AuthFailed,
            format!(
                "the tag of system title {} with invocation counter {invocation_counter} does not match its keys",
                hex(&system_title)
            ),
        )
    };
    if encrypted {
        let mut plain = data.to_vec();
        cipher
            .decrypt_in_place_detached(nonce, &aad, &mut plain, tag)
            .map_err(|_| failed())?;
        Ok((security, plain))
    } else {
        // Authenticated only: the data in clear is part of the AAD, nothing is encrypted.
        aad.extend_from_slice(data);
        cipher
            .decrypt_in_place_detached(nonce, &aad, &mut [], tag)
            .map_err(|_| failed())?;
        Ok((security, data.to_vec()))
    }
}

/// The security header of a ciphered push as an edge can read it before anything is
/// deciphered: the ciphering tag (`DB` or `DC`), the system title, and the security control
/// byte when the APDU reaches that far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SecurityHead {
    pub tag: u8,
    pub system_title: [u8; 8],
    pub control: Option<u8>,
}

/// A general-glo-ciphering APDU of `plain` (a DataNotification), authenticated and
/// encrypted (security control 0x30) under `keys`: what a meter sends. For tests of the
/// listener and the pipeline, which need a push of their own keys; meterflow never ciphers.
#[doc(hidden)]
pub fn seal_for_tests(system_title: [u8; 8], keys: &Keys, counter: u32, plain: &[u8]) -> Vec<u8> {
    let control = 0x30u8;
    let mut iv = [0u8; 12];
    iv[..8].copy_from_slice(&system_title);
    iv[8..].copy_from_slice(&counter.to_be_bytes());
    let mut aad = vec![control];
    aad.extend_from_slice(&keys.ak.unwrap_or([0; 16]));
    let mut body = plain.to_vec();
    let cipher = Aes128Gcm12::new(&keys.ek.into());
    let tag = cipher
        .encrypt_in_place_detached(Nonce::<U12>::from_slice(&iv), &aad, &mut body)
        .unwrap_or_default();
    let mut content = vec![control];
    content.extend_from_slice(&counter.to_be_bytes());
    content.extend(body);
    content.extend_from_slice(&tag);
    let mut apdu = vec![0xDB, 8];
    apdu.extend_from_slice(&system_title);
    match content.len() {
        n @ 0..=127 => apdu.push(n as u8),
        n @ 128..=255 => apdu.extend([0x81, n as u8]),
        n => apdu.extend([0x82, (n >> 8) as u8, n as u8]),
    }
    apdu.extend(content);
    apdu
}

/// The security header of a ciphered push, read from as few bytes as it takes and nothing else
/// checked: `DB`/`DC`, a length of 8, the 8 bytes, the ciphered content's length, the security
/// control; or the same at the start of the data of a general-block-transfer (`E0`), joined
/// over as many blocks as those bytes need. `None`: the APDU is not ciphered (a
/// DataNotification in clear) or not readable as far as its system title. For an edge (and
/// the pipeline) that must know who sent a push, and what protection it claims, before it
/// deciphers or stores it; [`open`] reads it again, whole.
pub fn security_head(apdu: &[u8]) -> Option<SecurityHead> {
    // Tag, length 8, the title, the content's length (at most 5 bytes), the control.
    const NEEDED: usize = 1 + 1 + 8 + 5 + 1;
    let head: std::borrow::Cow<'_, [u8]> = match apdu.first()? {
        0xE0 => {
            let mut r = Reader::new(apdu, 0);
            let mut head = Vec::with_capacity(NEEDED);
            while head.len() < NEEDED && !r.is_empty() {
                if r.u8("").ok()? != 0xE0 {
                    return None;
                }
                let control = r.u8("").ok()?;
                r.u16("").ok()?;
                r.u16("").ok()?;
                let len = r.length("").ok()?;
                // A block cut short still gives what it has.
                let data = r.rest().get(..len).unwrap_or(r.rest());
                let want = (NEEDED - head.len()).min(data.len());
                head.extend_from_slice(&data[..want]);
                if control & 0x80 != 0 || data.len() < len {
                    break;
                }
                r.take(len, "").ok()?;
            }
            std::borrow::Cow::Owned(head)
        }
        _ => std::borrow::Cow::Borrowed(apdu),
    };
    let mut r = Reader::new(&head, 0);
    let tag = r.u8("").ok()?;
    if !matches!(tag, 0xDB | 0xDC) || r.length("").ok()? != 8 {
        return None;
    }
    let system_title = *r.array::<8>("").ok()?;
    let control = r.length("").ok().and_then(|_| r.u8("").ok());
    Some(SecurityHead {
        tag,
        system_title,
        control,
    })
}

/// The system title of a ciphered push ([`security_head`]).
pub fn system_title(apdu: &[u8]) -> Option<[u8; 8]> {
    security_head(apdu).map(|h| h.system_title)
}

/// Hex, upper case (system titles in messages).
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

/// A DataNotification, read.
#[derive(Debug, Clone, PartialEq)]
pub struct Notification<'a> {
    pub long_invoke_id: u32,
    pub date_time: Option<&'a [u8; 12]>,
    pub body: Data<'a>,
}

/// Reads a DataNotification (`bytes` starts with `0F`; at `base` in the payload).
pub fn notification(bytes: &[u8], base: usize) -> Result<Notification<'_>, DecodeError> {
    let mut r = Reader::new(bytes, base);
    r.u8("the DataNotification tag")?;
    let long_invoke_id = r.u32("the long-invoke-id-and-priority")?;
    let dt_at = r.offset();
    let date_time = match r.u8("the date-time's length")? {
        0x00 => None,
        0x0C => Some(r.array::<12>("the date-time")?),
        // Some meters (Kaifa MA304H3E) send it as a tagged octet-string.
        0x09 => {
            if r.u8("the date-time's length")? != 0x0C {
                return Err(malformed(dt_at, "a date-time that is not 12 bytes"));
            }
            Some(r.array::<12>("the date-time")?)
        }
        other => {
            return Err(malformed(
                dt_at,
                format!("a date-time of length {other}, not 0 or 12"),
            ))
        }
    };
    let body_reader = r.clone();
    let body = match r.data() {
        Ok(body) if r.is_empty() => body,
        Ok(_) => {
            return Err(malformed(
                r.offset(),
                format!("{} bytes after the body", r.remaining()),
            ))
        }
        // Czech pushes (Sagemcom XT211, EG.D) put an untagged descriptor before each value.
        Err(e) => descriptor_list(body_reader).ok_or(e)?,
    };
    Ok(Notification {
        long_invoke_id,
        date_time,
        body,
    })
}

/// A body of untagged attribute descriptors (Czech pushes: Sagemcom XT211, EG.D):
/// `structure(2) { enum, array(N) of structure(2) { class-id(2) OBIS(6) attribute(1), value } }`
/// with the descriptors' bytes not A-XDR. Read as the same structure with each descriptor's
/// OBIS as an octet-string, so that it pairs with its value as in any self-describing body.
/// `None` when the bytes are not that layout to the last byte.
fn descriptor_list(mut r: Reader<'_>) -> Option<Data<'_>> {
    if r.take(2, "").ok()? != [0x02, 0x02] {
        return None;
    }
    let head = r.data().ok()?;
    if r.u8("").ok()? != 0x01 {
        return None;
    }
    let n = r.length("").ok()?;
    if n > r.remaining() {
        return None;
    }
    let mut items = Vec::with_capacity(n);
    for _ in 0..n {
        if r.take(2, "").ok()? != [0x02, 0x02] {
            return None;
        }
        let descriptor = r.take(9, "").ok()?;
        let value = r.data().ok()?;
        items.push(Data::Structure(vec![
            Data::OctetString(descriptor.get(2..8)?),
            value,
        ]));
    }
    r.is_empty()
        .then(|| Data::Structure(vec![head, Data::Array(items)]))
}

#[cfg(test)]
mod tests {

    #[test]
    fn the_check_value_of_a_key_is_its_zero_block_encrypted() {
        // AES-128, key and block all zeros: 66E94BD4EF8A2C3B884CFA59CA342B2E.
        let keys = Keys {
            ek: [0; 16],
            ak: None,
        };
        assert_eq!(keys.check_value(), 0x66E9_4BD4);
    }

    use super::*;

    const ST: [u8; 8] = *b"MMM\x00\x00\xBC\x61\x4E";
    const EK: [u8; 16] = [0x10; 16];
    const AK: [u8; 16] = [0x20; 16];

    /// A general-glo-ciphering APDU of `plain` under security control `sc`, made here with the
    /// same cipher (the vectors test the cipher against published values).
    fn ciphered(sc: u8, counter: u32, plain: &[u8]) -> Vec<u8> {
        let mut iv = [0u8; 12];
        iv[..8].copy_from_slice(&ST);
        iv[8..].copy_from_slice(&counter.to_be_bytes());
        let mut aad = vec![sc];
        aad.extend_from_slice(&AK);
        let mut body = plain.to_vec();
        let cipher = Aes128Gcm12::new(&EK.into());
        let nonce = Nonce::<U12>::from_slice(&iv);
        let tag = match sc & 0x30 {
            0x30 => Some(
                cipher
                    .encrypt_in_place_detached(nonce, &aad, &mut body)
                    .unwrap(),
            ),
            0x10 => {
                aad.extend_from_slice(plain);
                Some(
                    cipher
                        .encrypt_in_place_detached(nonce, &aad, &mut [])
                        .unwrap(),
                )
            }
            0x20 => {
                let mut counter_block = [0u8; 16];
                counter_block[..12].copy_from_slice(&iv);
                counter_block[15] = 2;
                Aes128Ctr::new(&EK.into(), &counter_block.into()).apply_keystream(&mut body);
                None
            }
            _ => None,
        };
        let mut content = vec![sc];
        content.extend_from_slice(&counter.to_be_bytes());
        content.extend(body);
        if let Some(tag) = tag {
            content.extend_from_slice(&tag);
        }
        let mut apdu = vec![0xDB, 8];
        apdu.extend_from_slice(&ST);
        apdu.push(u8::try_from(content.len()).unwrap());
        apdu.extend(content);
        apdu
    }

    /// A DataNotification with one object: {1-0:1.8.0, 1234 Wh}.
    const NOTE: [u8; 26] = [
        0x0F, 0, 0, 0, 1, 0x00, 2, 3, 9, 6, 1, 0, 1, 8, 0, 255, 6, 0, 0, 4, 0xD2, 2, 2, 15, 0, 22,
    ];

    fn keys(_: &[u8; 8]) -> KeyLookup {
        KeyLookup::Keys(Keys {
            ek: EK,
            ak: Some(AK),
        })
    }

    #[test]
    fn every_security_control_opens_and_a_wrong_key_is_refused() {
        let mut note = NOTE.to_vec();
        note.push(30);
        for sc in [0x30, 0x10, 0x20, 0x00, 0x31] {
            let opened = open(&ciphered(sc, 7, &note), 0, &keys).unwrap();
            assert_eq!(
                opened.content,
                Content::Notification(note.clone()),
                "0x{sc:02X}"
            );
            assert_eq!(opened.security.unwrap().invocation_counter, 7);
        }
        let other = |_: &[u8; 8]| {
            KeyLookup::Keys(Keys {
                ek: EK,
                ak: Some([0x21; 16]),
            })
        };
        for sc in [0x30, 0x10] {
            let e = open(&ciphered(sc, 7, &note), 0, &other).unwrap_err();
            assert!(
                matches!(
                    e,
                    DecodeError::Refused {
                        refusal: Refusal::AuthFailed,
                        ..
                    }
                ),
                "{e}"
            );
            assert!(!e.to_string().contains("2121"), "no key in {e}");
        }
    }

    #[test]
    fn refusals_by_what_the_store_knows() {
        let mut note = NOTE.to_vec();
        note.push(30);
        let push = ciphered(0x30, 1, &note);
        let kind = |lookup: &dyn Fn(&[u8; 8]) -> KeyLookup, apdu: &[u8]| match open(apdu, 0, lookup)
        {
            Err(DecodeError::Refused { refusal, .. }) => Some(refusal),
            Ok(_) => None,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(kind(&|_| KeyLookup::NoKey, &push), Some(Refusal::NoKey));
        assert_eq!(
            kind(&|_| KeyLookup::Unknown, &push),
            Some(Refusal::UnknownSystemTitle)
        );
        let forbidden = |_: &[u8; 8]| KeyLookup::Forbidden("another meter's".into());
        assert_eq!(kind(&forbidden, &push), Some(Refusal::Unauthorized));
        // In clear (security control 0x00) too: the system title must still be its meter's.
        let clear = ciphered(0x00, 1, &note);
        assert_eq!(kind(&forbidden, &clear), Some(Refusal::Unauthorized));
        assert_eq!(
            kind(&|_| KeyLookup::Unknown, &clear),
            Some(Refusal::UnknownSystemTitle)
        );
        assert_eq!(
            kind(&|_| KeyLookup::NoKey, &clear),
            None,
            "in clear, no key needed"
        );
        // A tag without an authentication key to check it.
        let no_ak = |_: &[u8; 8]| KeyLookup::Keys(Keys { ek: EK, ak: None });
        assert_eq!(kind(&no_ak, &push), Some(Refusal::NoKey));
        // The broadcast key set: refused for what it is, not as a failed tag.
        let broadcast = ciphered(0x70, 1, &note);
        let e = open(&broadcast, 0, &keys).unwrap_err().to_string();
        assert!(e.contains("broadcast key"), "{e}");
        // Suite 2 (AES-256) and compression are not read.
        let mut suite2 = ciphered(0x30, 1, &note);
        suite2[11] = 0x32;
        assert!(matches!(
            open(&suite2, 0, &keys),
            Err(DecodeError::Unsupported { .. })
        ));
    }

    #[test]
    fn blocks_join_in_order() {
        let mut note = NOTE.to_vec();
        note.push(30);
        let push = ciphered(0x30, 9, &note);
        let (a, b) = push.split_at(20);
        let block = |control: u8, number: u16, data: &[u8]| {
            let mut v = vec![0xE0, control];
            v.extend_from_slice(&number.to_be_bytes());
            v.extend_from_slice(&0u16.to_be_bytes());
            v.push(u8::try_from(data.len()).unwrap());
            v.extend_from_slice(data);
            v
        };
        let joined = [block(0x40, 1, a), block(0xC0, 2, b)].concat();
        let opened = open(&joined, 0, &keys).unwrap();
        assert_eq!(
            (opened.blocks, opened.content),
            (2, Content::Notification(note.clone()))
        );
        let wrong = [block(0x40, 1, a), block(0xC0, 3, b)].concat();
        assert!(open(&wrong, 0, &keys).is_err());
        let unfinished = block(0x40, 1, a);
        assert!(open(&unfinished, 0, &keys).is_err());
    }

    #[test]
    fn the_system_title_is_read_from_the_first_bytes_only() {
        let block = |control: u8, number: u16, data: &[u8]| {
            let mut v = vec![0xE0, control];
            v.extend_from_slice(&number.to_be_bytes());
            v.extend_from_slice(&0u16.to_be_bytes());
            v.push(u8::try_from(data.len()).unwrap());
            v.extend_from_slice(data);
            v
        };
        let push = ciphered(0x30, 9, &NOTE);
        assert_eq!(system_title(&push), Some(ST));
        // Dedicated ciphering; nothing after the title is looked at.
        let mut ded = push[..10].to_vec();
        ded[0] = 0xDC;
        assert_eq!(system_title(&ded), Some(ST));
        // In blocks: the first block's data, or joined when the title spans blocks; a last
        // block cut short still gives what it has.
        let (a, b) = push.split_at(20);
        assert_eq!(
            system_title(&[block(0x40, 1, a), block(0xC0, 2, b)].concat()),
            Some(ST)
        );
        let (a, b) = push.split_at(4);
        assert_eq!(
            system_title(&[block(0x40, 1, a), block(0xC0, 2, b)].concat()),
            Some(ST)
        );
        let mut cut = block(0xC0, 1, &push);
        cut.truncate(20);
        assert_eq!(system_title(&cut), Some(ST));
        // None: in clear, a title not of 8 bytes, too short, blocks of a notification in clear,
        // a title that the blocks end before.
        let mut seven = push[..10].to_vec();
        seven[1] = 7;
        let (a, _) = push.split_at(4);
        for not in [
            NOTE.to_vec(),
            seven,
            push[..9].to_vec(),
            block(0xC0, 1, &NOTE),
            block(0xC0, 1, a),
            Vec::new(),
            vec![0xE0],
        ] {
            assert_eq!(system_title(&not), None, "{not:02X?}");
        }
    }

    #[test]
    fn the_security_head_gives_the_tag_and_the_claimed_protection_without_a_key() {
        let block = |control: u8, number: u16, data: &[u8]| {
            let mut v = vec![0xE0, control];
            v.extend_from_slice(&number.to_be_bytes());
            v.extend_from_slice(&0u16.to_be_bytes());
            v.push(u8::try_from(data.len()).unwrap());
            v.extend_from_slice(data);
            v
        };
        for sc in [0x30, 0x10, 0x20, 0x00, 0x21] {
            let short = ciphered(sc, 9, &NOTE);
            // The content's length in two bytes (0x81 n), as a content of 128 bytes or more
            // has it.
            let mut long = short.clone();
            long.splice(10..11, [0x81, short[10]]);
            for push in [short, long] {
                let want = SecurityHead {
                    tag: 0xDB,
                    system_title: ST,
                    control: Some(sc),
                };
                assert_eq!(security_head(&push), Some(want), "0x{sc:02X}");
                // Over blocks: the head split anywhere.
                for at in [3, 10, 11, 12] {
                    let (a, b) = push.split_at(at);
                    let blocks = [block(0x40, 1, a), block(0xC0, 2, b)].concat();
                    assert_eq!(security_head(&blocks), Some(want), "0x{sc:02X} at {at}");
                }
            }
        }
        // Cut after the title: the title, no control.
        let push = ciphered(0x30, 9, &NOTE);
        assert_eq!(
            security_head(&push[..11]),
            Some(SecurityHead {
                tag: 0xDB,
                system_title: ST,
                control: None,
            })
        );
        let mut ded = push.clone();
        ded[0] = 0xDC;
        assert_eq!(security_head(&ded).map(|h| h.tag), Some(0xDC));
        assert_eq!(security_head(&NOTE), None);
    }
}
