//! cosign signatures checked with a given public key, offline: no transparency log, no certificate
//! authority. What `cosign generate-key-pair` makes is an ECDSA P-256 key; `cosign sign --key`
//! signs a *simple-signing payload* naming the artifact's manifest digest and stores it in the same
//! repository under the tag `sha256-<digest>.sig`; `cosign sign-blob --key` signs a file's bytes.
//! Both signatures are ASN.1 DER, base64-encoded, over SHA-256.

use base64::Engine as _;
use p256::ecdsa::signature::Verifier;
use p256::ecdsa::{Signature as EcdsaSignature, VerifyingKey};
use p256::pkcs8::DecodePublicKey;
use serde::{Deserialize, Serialize};

/// A public key signatures are checked with.
#[derive(Debug, Clone)]
pub struct PublicKey(VerifyingKey);

/// One cosign signature found for an artifact: the payload it signs and the signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signature {
    /// The simple-signing payload (JSON).
    #[serde(with = "b64")]
    pub payload: Vec<u8>,
    /// The base64 DER signature, as cosign stores it.
    pub signature: String,
}

/// The media type of a cosign signature layer.
pub const SIMPLE_SIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
/// The layer annotation holding the signature.
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";

impl PublicKey {
    /// Reads a PEM `PUBLIC KEY` (what `cosign generate-key-pair` writes to `cosign.pub`).
    pub fn from_pem(pem: &str) -> Result<PublicKey, String> {
        VerifyingKey::from_public_key_pem(pem.trim())
            .map(PublicKey)
            .map_err(|e| format!("not an ECDSA P-256 public key in PEM (`-----BEGIN PUBLIC KEY-----`): {e}"))
    }

    /// Whether `signature` (base64 DER) is this key's signature of `message`.
    fn signed(&self, message: &[u8], signature: &str) -> Result<(), String> {
        let der = base64::engine::general_purpose::STANDARD
            .decode(signature.trim())
            .map_err(|e| format!("the signature is not base64: {e}"))?;
        let signature = EcdsaSignature::from_der(&der).map_err(|e| format!("not an ECDSA signature: {e}"))?;
        // ECDSA holds for s and n - s alike; signers that do not normalize s are common.
        let signature = signature.normalize_s().unwrap_or(signature);
        self.0
            .verify(message, &signature)
            .map_err(|_| "the signature does not match this key".to_owned())
    }

    /// Checks that one of `signatures` is this key's, over a payload naming `manifest_digest`.
    pub fn verify_artifact(&self, manifest_digest: &str, signatures: &[Signature]) -> Result<(), String> {
        if signatures.is_empty() {
            return Err(format!(
                "`{manifest_digest}` is not signed (no cosign signature under the tag `{}`)",
                signature_tag(manifest_digest)
            ));
        }
        let mut reasons = Vec::new();
        for signature in signatures {
            match self
                .signed(&signature.payload, &signature.signature)
                .and_then(|()| signed_digest(&signature.payload))
            {
                Ok(digest) if digest == manifest_digest => return Ok(()),
                Ok(digest) => reasons.push(format!("a valid signature of another artifact ({digest})")),
                Err(reason) => reasons.push(reason),
            }
        }
        Err(format!(
            "no valid signature of `{manifest_digest}` by the trusted key ({})",
            reasons.join("; ")
        ))
    }

    /// Checks a detached signature of a file's bytes (`cosign sign-blob --key`).
    pub fn verify_blob(&self, bytes: &[u8], signature: &str) -> Result<(), String> {
        self.signed(bytes, signature)
    }
}

/// The tag cosign stores the signatures of `manifest_digest` under: `sha256-<hex>.sig`.
pub fn signature_tag(manifest_digest: &str) -> String {
    format!("{}.sig", manifest_digest.replace(':', "-"))
}

/// The manifest digest a simple-signing payload vouches for.
fn signed_digest(payload: &[u8]) -> Result<String, String> {
    #[derive(Deserialize)]
    struct Payload {
        critical: Critical,
    }
    #[derive(Deserialize)]
    struct Critical {
        image: Image,
        #[serde(rename = "type")]
        kind: String,
    }
    #[derive(Deserialize)]
    struct Image {
        #[serde(rename = "docker-manifest-digest")]
        digest: String,
    }
    let payload: Payload =
        serde_json::from_slice(payload).map_err(|e| format!("a signed payload that is not cosign's: {e}"))?;
    if payload.critical.kind != "cosign container image signature" {
        return Err(format!("a signed payload of type `{}`", payload.critical.kind));
    }
    Ok(payload.critical.image.digest)
}

mod b64 {
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(serde::de::Error::custom)
    }
}
