//! TUF public keys (docs/format.md §7.1), Ed25519 signing keys, and canonical JSON.
//!
//! A public key is the TUF object `{"keytype":..,"scheme":..,"keyval":{"public":..}}`; its key
//! id is the SHA-256 of that whole object's canonical JSON, fields this implementation does not
//! know included (as TUF's own tools compute it). Keys of ours are Ed25519 (`keyval.public` is
//! hex); keys made by other TUF tools may also be ECDSA P-256 (`ecdsa-sha2-nistp256`) or RSA
//! (`rsassa-pss-sha256`, `rsa-pkcs1v15-sha256`) with a PEM (SubjectPublicKeyInfo) public key;
//! those are verified, never generated. A secret key file adds `keyval.private` (the 32-byte
//! Ed25519 seed, hex).

use std::collections::BTreeMap;

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::hash::Sha256;

/// Serializes `value` as OLPC canonical JSON (sorted keys, no insignificant white space),
/// the form TUF signs.
pub fn canonical_json<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut ser =
        serde_json::Serializer::with_formatter(&mut out, olpc_cjson::CanonicalFormatter::new());
    value
        .serialize(&mut ser)
        .map_err(|e| Error::invalid("canonical JSON", e.to_string()))?;
    Ok(out)
}

/// The `keyval` object of a TUF key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyVal {
    /// Public key, hex.
    pub public: String,
    /// Secret seed, hex (only in secret key files).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub private: Option<String>,
    /// Fields of other tools, kept so that the key id covers them.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

/// A TUF public key object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicKey {
    /// `ed25519` for keys of ours; `ecdsa`, `ecdsa-sha2-nistp256` or `rsa` for keys of other
    /// TUF tools.
    pub keytype: String,
    /// `ed25519`, `ecdsa-sha2-nistp256`, `rsassa-pss-sha256` or `rsa-pkcs1v15-sha256`.
    pub scheme: String,
    /// The key material.
    pub keyval: KeyVal,
    /// Fields of other tools (`keyid_hash_algorithms`, `x-...`), kept so that the key id
    /// covers them.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

/// A public key parsed for verification.
enum Verifier {
    Ed25519(VerifyingKey),
    EcdsaP256(p256::ecdsa::VerifyingKey),
    RsaPss(rsa::pss::VerifyingKey<sha2::Sha256>),
    RsaPkcs1(rsa::pkcs1v15::VerifyingKey<sha2::Sha256>),
}

impl PublicKey {
    /// Wraps raw Ed25519 public key bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        PublicKey {
            keytype: "ed25519".into(),
            scheme: "ed25519".into(),
            keyval: KeyVal {
                public: hex::encode(bytes),
                private: None,
                extra: BTreeMap::new(),
            },
            extra: BTreeMap::new(),
        }
    }

    /// The key id: SHA-256 (hex) of the canonical JSON of the whole public key object as
    /// received (without a secret part), unknown fields included.
    pub fn key_id(&self) -> String {
        let mut public_only = self.clone();
        public_only.keyval.private = None;
        // Serializing strings and JSON values cannot fail.
        let bytes = canonical_json(&public_only).unwrap_or_default();
        Sha256::of(&bytes).to_hex()
    }

    fn key_error(&self, reason: String) -> Error {
        Error::Key {
            what: format!("key {}", self.key_id()),
            reason,
        }
    }

    /// Parses the key material for its key type and scheme.
    fn verifier(&self) -> Result<Verifier> {
        use p256::pkcs8::DecodePublicKey;
        let public = &self.keyval.public;
        match (self.keytype.as_str(), self.scheme.as_str()) {
            ("ed25519", "ed25519") => self.verifying_key().map(Verifier::Ed25519),
            ("ecdsa" | "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp256") => {
                p256::ecdsa::VerifyingKey::from_public_key_pem(public)
                    .map(Verifier::EcdsaP256)
                    .map_err(|e| {
                        self.key_error(format!("public key is not a PEM P-256 public key: {e}"))
                    })
            }
            ("rsa", "rsassa-pss-sha256" | "rsa-pkcs1v15-sha256") => {
                let key = rsa::RsaPublicKey::from_public_key_pem(public).map_err(|e| {
                    self.key_error(format!("public key is not a PEM RSA public key: {e}"))
                })?;
                Ok(if self.scheme == "rsassa-pss-sha256" {
                    Verifier::RsaPss(rsa::pss::VerifyingKey::new(key))
                } else {
                    Verifier::RsaPkcs1(rsa::pkcs1v15::VerifyingKey::new(key))
                })
            }
            (t, s) => Err(self.key_error(format!(
                "unsupported key type {t:?} with scheme {s:?}; supported: ed25519, \
                 ecdsa-sha2-nistp256, rsassa-pss-sha256, rsa-pkcs1v15-sha256"
            ))),
        }
    }

    /// Fails when the key's type, scheme or material is not one this client can verify with.
    pub fn check(&self) -> Result<()> {
        self.verifier().map(|_| ())
    }

    /// The Ed25519 verifying key, or an error when the object is not a usable Ed25519 key.
    pub fn verifying_key(&self) -> Result<VerifyingKey> {
        if self.keytype != "ed25519" || self.scheme != "ed25519" {
            return Err(Error::Key {
                what: self.key_id(),
                reason: format!(
                    "key type {:?}/{:?} is not ed25519, which this needs",
                    self.keytype, self.scheme
                ),
            });
        }
        let mut b = [0u8; 32];
        hex::decode_to_slice(&self.keyval.public, &mut b).map_err(|e| Error::Key {
            what: self.key_id(),
            reason: format!("public key is not 32 bytes of hex: {e}"),
        })?;
        VerifyingKey::from_bytes(&b).map_err(|e| Error::Key {
            what: self.key_id(),
            reason: format!("not a valid Ed25519 point: {e}"),
        })
    }

    /// Verifies `sig_hex` over `message`; false on any malformed input.
    pub fn verify(&self, message: &[u8], sig_hex: &str) -> bool {
        use rsa::signature::Verifier as _;
        let Ok(verifier) = self.verifier() else {
            return false;
        };
        let Ok(sig) = hex::decode(sig_hex) else {
            return false;
        };
        match verifier {
            Verifier::Ed25519(vk) => {
                let Ok(sig) = <[u8; 64]>::try_from(sig.as_slice()) else {
                    return false;
                };
                vk.verify_strict(message, &ed25519_dalek::Signature::from_bytes(&sig))
                    .is_ok()
            }
            Verifier::EcdsaP256(vk) => p256::ecdsa::DerSignature::try_from(sig.as_slice())
                .is_ok_and(|s| vk.verify(message, &s).is_ok()),
            Verifier::RsaPss(vk) => rsa::pss::Signature::try_from(sig.as_slice())
                .is_ok_and(|s| vk.verify(message, &s).is_ok()),
            Verifier::RsaPkcs1(vk) => rsa::pkcs1v15::Signature::try_from(sig.as_slice())
                .is_ok_and(|s| vk.verify(message, &s).is_ok()),
        }
    }

    /// Parses a public key file (the TUF key object as JSON). A secret key file is refused:
    /// whatever reads a public key (an app pinning the root key, a root naming release keys)
    /// must never be handed the secret half, or it ends up shipped or copied where it does not
    /// belong.
    pub fn from_json(what: &str, bytes: &[u8]) -> Result<Self> {
        let k: PublicKey = serde_json::from_slice(bytes).map_err(|e| Error::Json {
            what: what.to_string(),
            source: e,
        })?;
        if k.keyval.private.is_some() {
            return Err(Error::Key {
                what: what.to_string(),
                reason: "is a secret key file where a public key is expected; give the .pub \
                         file made with it: shipping the secret key in an app would let anyone \
                         who has the app sign updates"
                    .into(),
            });
        }
        k.check().map_err(|e| Error::Key {
            what: what.to_string(),
            reason: e.to_string(),
        })?;
        Ok(PublicKey {
            keyval: KeyVal {
                private: None,
                ..k.keyval
            },
            ..k
        })
    }

    /// The public key file's contents (canonical JSON plus a newline).
    pub fn to_json(&self) -> Vec<u8> {
        let mut v = canonical_json(self).unwrap_or_default();
        v.push(b'\n');
        v
    }
}

/// An Ed25519 signing key.
pub struct KeyPair {
    signing: SigningKey,
}

impl std::fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyPair({})", self.public().key_id())
    }
}

impl KeyPair {
    /// A new key from the operating system's random source.
    pub fn generate() -> Result<Self> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| Error::Key {
            what: "new key".into(),
            reason: format!("no random source: {e}"),
        })?;
        Ok(KeyPair {
            signing: SigningKey::from_bytes(&seed),
        })
    }

    /// A key from a 32-byte seed (tests and fixtures).
    pub fn from_seed(seed: [u8; 32]) -> Self {
        KeyPair {
            signing: SigningKey::from_bytes(&seed),
        }
    }

    /// The public half.
    pub fn public(&self) -> PublicKey {
        PublicKey::from_bytes(self.signing.verifying_key().to_bytes())
    }

    /// Signs `message`, returning the signature as hex.
    pub fn sign_hex(&self, message: &[u8]) -> String {
        hex::encode(self.signing.sign(message).to_bytes())
    }

    /// Parses a secret key file; `what` names it in errors.
    pub fn from_json(what: &str, bytes: &[u8]) -> Result<Self> {
        let k: PublicKey = serde_json::from_slice(bytes).map_err(|e| Error::Key {
            what: what.to_string(),
            reason: format!("not a key file: {e}"),
        })?;
        let private = k.keyval.private.as_deref().ok_or_else(|| Error::Key {
            what: what.to_string(),
            reason: "is a public key file (no private part) where a secret (signing) key is \
                     expected; give the .key file `patch-create keygen` wrote next to it"
                .into(),
        })?;
        let mut seed = [0u8; 32];
        hex::decode_to_slice(private, &mut seed).map_err(|e| Error::Key {
            what: what.to_string(),
            reason: format!("private part is not 32 bytes of hex: {e}"),
        })?;
        let pair = KeyPair::from_seed(seed);
        if pair.public().keyval.public != k.keyval.public {
            return Err(Error::Key {
                what: what.to_string(),
                reason: "public part does not match the private part".into(),
            });
        }
        Ok(pair)
    }

    /// The secret key file's contents.
    pub fn to_json(&self) -> Vec<u8> {
        let mut k = self.public();
        k.keyval.private = Some(hex::encode(self.signing.to_bytes()));
        let mut v = canonical_json(&k).unwrap_or_default();
        v.push(b'\n');
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_files_round_trip_and_sign() {
        let k = KeyPair::from_seed([7; 32]);
        let k2 = KeyPair::from_json("k", &k.to_json()).unwrap();
        assert_eq!(k.public(), k2.public());
        let p = PublicKey::from_json("p", &k.public().to_json()).unwrap();
        let sig = k.sign_hex(b"msg");
        assert!(p.verify(b"msg", &sig));
        assert!(!p.verify(b"msh", &sig));
        assert!(!p.verify(b"msg", "00"));
        assert!(KeyPair::from_json("p", &k.public().to_json()).is_err());
        let secret_as_public = PublicKey::from_json("s", &k.to_json()).unwrap_err();
        assert!(
            secret_as_public.to_string().contains("secret key"),
            "{secret_as_public}"
        );
        assert_eq!(p.key_id().len(), 64);
    }

    #[test]
    fn canonical_json_sorts_keys() {
        let v: serde_json::Value = serde_json::from_str(r#"{"b":1,"a":[true,"x\"y"]}"#).unwrap();
        assert_eq!(canonical_json(&v).unwrap(), br#"{"a":[true,"x\"y"],"b":1}"#);
    }
}
