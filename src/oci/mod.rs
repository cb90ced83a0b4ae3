//! Components in OCI registries, in the CNCF Wasm OCI artifact format (a manifest whose config is
//! `application/vnd.wasm.config.v0+json` and whose one layer is the `application/wasm` component):
//! resolving a tag to a digest, pulling by digest into a local store so a restart needs no
//! registry, the cosign signatures stored beside an artifact, and pushing one. Docs: docs/fleet.md.
//!
//! The store is `<cache-dir>/oci/`: `sha256-<hex>.wasm` (a pulled component, by its *manifest*
//! digest, written only once the manifest and layer digests checked out), `sha256-<hex>.sigs.json`
//! (the cosign signatures found for it) and `tags/<sha256 of the reference>.json` (the digest a
//! tag last resolved to, for a start while the registry is down). Files are written to a
//! temporary name and renamed.

pub mod signature;

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use oci_client::client::{ClientConfig, ClientProtocol, Config as OciConfig, ImageLayer};
use oci_client::errors::OciDistributionError;
use oci_client::manifest::{OciImageManifest, OciManifest};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::files::write_atomically;
pub use signature::{PublicKey, Signature};

/// The config media type of a Wasm component artifact.
pub const WASM_CONFIG: &str = "application/vnd.wasm.config.v0+json";
/// The media type of its one layer: the component.
pub const WASM_LAYER: &str = "application/wasm";

/// How to reach registries: which ones speak plain HTTP, and with what credentials.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settings {
    /// `HOST[:PORT]`s reached over `http://` (everything else is HTTPS).
    pub insecure: Vec<String>,
    /// A docker-style `config.json` (`{"auths": {"HOST": {"auth": base64("USER:PASSWORD")}}}`).
    pub credentials_file: Option<PathBuf>,
    /// Deadline for connecting, and for each read.
    pub timeout: Duration,
}

/// Why a pull, a push or a tag resolution failed.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    /// The registry could not be reached (connection refused, DNS, timeout).
    #[error("registry `{registry}` is unreachable: {reason}")]
    Unreachable {
        /// `HOST[:PORT]`.
        registry: String,
        /// What the transport said.
        reason: String,
    },
    /// The registry answered, with an error or something that is not a Wasm component artifact.
    #[error("{0}")]
    Registry(String),
    /// The credentials file cannot be used.
    #[error("{0}")]
    Credentials(String),
}

/// A component pulled (or found in the store) for a reference.
#[derive(Debug, Clone)]
pub struct Pulled {
    /// The manifest digest the reference resolved to (`sha256:…`).
    pub digest: String,
    /// The component's bytes.
    pub component: Bytes,
    /// Whether the bytes came from the local store (no download).
    pub stored: bool,
    /// Set when the tag could not be resolved because the registry is unreachable, and the digest
    /// it last resolved to was used: why.
    pub offline: Option<String>,
}

/// A client for the registries of one config, with the local store.
pub struct Registry {
    client: Client,
    settings: Settings,
    store: PathBuf,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("settings", &self.settings)
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

impl Registry {
    /// A client with `settings`, storing pulls under `cache_dir/oci`.
    pub fn new(settings: Settings, cache_dir: &Path) -> Result<Registry, OciError> {
        // reqwest is built without a provider of its own: use the one pingora uses.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let config = ClientConfig {
            protocol: ClientProtocol::HttpsExcept(settings.insecure.clone()),
            connect_timeout: Some(settings.timeout),
            read_timeout: Some(settings.timeout),
            user_agent: concat!("sluice/", env!("CARGO_PKG_VERSION")),
            // A component artifact is one manifest, never an index.
            platform_resolver: None,
            ..ClientConfig::default()
        };
        let client =
            Client::try_from(config).map_err(|e| OciError::Registry(format!("cannot create a client: {e}")))?;
        Ok(Registry {
            client,
            settings,
            store: cache_dir.join("oci"),
        })
    }

    /// Whether this client was made with `settings`, storing in `cache_dir`.
    pub fn uses(&self, settings: &Settings, cache_dir: &Path) -> bool {
        self.settings == *settings && self.store == cache_dir.join("oci")
    }

    /// The credentials for `registry`: from the credentials file if it names the registry, else
    /// from `SLUICE_REGISTRY_USERNAME` and `SLUICE_REGISTRY_PASSWORD` if both are set, else
    /// anonymous.
    fn auth(&self, registry: &str) -> Result<RegistryAuth, OciError> {
        if let Some(file) = &self.settings.credentials_file
            && let Some(auth) = credentials(file, registry)?
        {
            return Ok(auth);
        }
        match (
            std::env::var("SLUICE_REGISTRY_USERNAME"),
            std::env::var("SLUICE_REGISTRY_PASSWORD"),
        ) {
            (Ok(user), Ok(password)) => Ok(RegistryAuth::Basic(user, password)),
            _ => Ok(RegistryAuth::Anonymous),
        }
    }

    /// The digest `reference`'s tag points to now (or its digest, if it names one).
    pub async fn resolve(&self, reference: &Reference) -> Result<String, OciError> {
        if let Some(digest) = reference.digest() {
            return Ok(digest.to_owned());
        }
        let auth = self.auth(reference.registry())?;
        let digest = self
            .client
            .fetch_manifest_digest(reference, &auth)
            .await
            .map_err(|e| failure(reference, e))?;
        self.remember_tag(reference, &digest);
        Ok(digest)
    }

    /// The component `reference` names: its tag resolved (or, with the registry unreachable, the
    /// digest it last resolved to), then the bytes from the store or the registry.
    pub async fn pull(&self, reference: &Reference) -> Result<Pulled, OciError> {
        let (digest, offline) = match self.resolve(reference).await {
            Ok(digest) => (digest, None),
            Err(e @ OciError::Unreachable { .. }) => match self.remembered_tag(reference) {
                Some(digest) => (digest, Some(e.to_string())),
                None => return Err(e),
            },
            Err(e) => return Err(e),
        };
        if let Ok(bytes) = std::fs::read(self.stored(&digest, "wasm")) {
            return Ok(Pulled {
                digest,
                component: Bytes::from(bytes),
                stored: true,
                offline,
            });
        }
        let by_digest = reference.clone_with_digest(digest.clone());
        let auth = self.auth(reference.registry())?;
        let (manifest, pulled_digest) = self
            .client
            .pull_image_manifest(&by_digest, &auth)
            .await
            .map_err(|e| failure(reference, e))?;
        if pulled_digest != digest {
            return Err(OciError::Registry(format!(
                "the registry sent manifest `{pulled_digest}` for `{digest}`"
            )));
        }
        let layer = wasm_layer(&manifest).map_err(|e| OciError::Registry(format!("`{}`: {e}", by_digest.whole())))?;
        let mut component = Vec::with_capacity(layer.size.max(0) as usize);
        self.client
            .pull_blob(&by_digest, layer, &mut component)
            .await
            .map_err(|e| failure(reference, e))?;
        let actual = format!("sha256:{}", hex::encode(Sha256::digest(&component)));
        if actual != layer.digest {
            return Err(OciError::Registry(format!(
                "layer `{}` of `{}` arrived as `{actual}`",
                layer.digest,
                by_digest.whole()
            )));
        }
        self.write(&digest, "wasm", &component);
        Ok(Pulled {
            digest,
            component: Bytes::from(component),
            stored: false,
            offline,
        })
    }

    /// The cosign signatures of the artifact `digest` in `reference`'s repository: fetched from
    /// the registry (and stored), or the stored ones while it is unreachable.
    pub async fn signatures(&self, reference: &Reference, digest: &str) -> Result<Vec<Signature>, OciError> {
        match self.fetch_signatures(reference, digest).await {
            Ok(signatures) => {
                if let Ok(json) = serde_json::to_vec(&signatures) {
                    self.write(digest, "sigs.json", &json);
                }
                Ok(signatures)
            }
            Err(e @ OciError::Unreachable { .. }) => {
                let stored = std::fs::read(self.stored(digest, "sigs.json")).ok();
                stored.and_then(|json| serde_json::from_slice(&json).ok()).ok_or(e)
            }
            Err(e) => Err(e),
        }
    }

    async fn fetch_signatures(&self, reference: &Reference, digest: &str) -> Result<Vec<Signature>, OciError> {
        let tag = signature::signature_tag(digest);
        let signatures = Reference::with_tag(reference.registry().to_owned(), reference.repository().to_owned(), tag);
        let auth = self.auth(reference.registry())?;
        let manifest = match self.client.pull_manifest(&signatures, &auth).await {
            Ok((OciManifest::Image(manifest), _)) => manifest,
            Ok((OciManifest::ImageIndex(_), _)) => return Ok(Vec::new()),
            Err(e) if not_found(&e) => return Ok(Vec::new()),
            Err(e) => return Err(failure(reference, e)),
        };
        let mut found = Vec::new();
        for layer in &manifest.layers {
            let annotation = layer
                .annotations
                .as_ref()
                .and_then(|a| a.get(signature::SIGNATURE_ANNOTATION));
            let Some(annotation) = annotation.filter(|_| layer.media_type == signature::SIMPLE_SIGNING) else {
                continue;
            };
            let mut payload = Vec::new();
            self.client
                .pull_blob(&signatures, layer, &mut payload)
                .await
                .map_err(|e| failure(reference, e))?;
            found.push(Signature {
                payload,
                signature: annotation.clone(),
            });
        }
        Ok(found)
    }

    /// Publishes `component` as `reference` in the Wasm artifact format; returns its manifest
    /// digest. `exports` and `imports` are the component's interface names, for the config blob.
    pub async fn push(
        &self,
        reference: &Reference,
        component: Bytes,
        imports: Vec<String>,
        exports: Vec<String>,
    ) -> Result<String, OciError> {
        let layer_digest = format!("sha256:{}", hex::encode(Sha256::digest(&component)));
        let config = serde_json::json!({
            "architecture": "wasm",
            "os": "wasip2",
            "layerDigests": [layer_digest],
            "component": { "imports": imports, "exports": exports },
        });
        let config = OciConfig::new(
            serde_json::to_vec(&config).unwrap_or_default(),
            WASM_CONFIG.to_owned(),
            None,
        );
        let layers = [ImageLayer::new(component, WASM_LAYER.to_owned(), None)];
        let mut manifest = OciImageManifest::build(&layers, &config, None);
        manifest.media_type = Some(oci_client::manifest::OCI_IMAGE_MEDIA_TYPE.to_owned());
        let auth = self.auth(reference.registry())?;
        self.client
            .push(reference, &layers, config, &auth, Some(manifest.clone()))
            .await
            .map_err(|e| failure(reference, e))?;
        let manifest = serde_json::to_vec(&manifest).unwrap_or_default();
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(&manifest)));
        // The registry's own digest of what it stored is the one that counts; the one computed
        // here from the same bytes if it cannot be asked.
        Ok(self
            .client
            .fetch_manifest_digest(reference, &auth)
            .await
            .unwrap_or(digest))
    }

    fn stored(&self, digest: &str, kind: &str) -> PathBuf {
        self.store.join(format!("{}.{kind}", digest.replace(':', "-")))
    }

    fn tag_file(&self, reference: &Reference) -> PathBuf {
        let key = hex::encode(Sha256::digest(reference.whole().as_bytes()));
        self.store.join("tags").join(format!("{key}.json"))
    }

    fn remember_tag(&self, reference: &Reference, digest: &str) {
        let record = TagRecord {
            reference: reference.whole(),
            digest: digest.to_owned(),
        };
        if self.remembered_tag(reference).as_deref() != Some(digest)
            && let Ok(json) = serde_json::to_vec(&record)
            && let Err(e) = write_atomically(&self.tag_file(reference), &json)
        {
            tracing::warn!(reference = %reference.whole(), error = %e, "cannot store the digest a tag resolved to");
        }
    }

    fn remembered_tag(&self, reference: &Reference) -> Option<String> {
        let json = std::fs::read(self.tag_file(reference)).ok()?;
        let record: TagRecord = serde_json::from_slice(&json).ok()?;
        (record.reference == reference.whole()).then_some(record.digest)
    }

    fn write(&self, digest: &str, kind: &str, bytes: &[u8]) {
        if let Err(e) = write_atomically(&self.stored(digest, kind), bytes) {
            tracing::warn!(digest, error = %e, "cannot store a pulled artifact; the next start pulls it again");
        }
    }
}

/// What a tag last resolved to.
#[derive(Serialize, Deserialize)]
struct TagRecord {
    reference: String,
    digest: String,
}

/// The one `application/wasm` layer of a Wasm component artifact.
fn wasm_layer(manifest: &OciImageManifest) -> Result<&oci_client::manifest::OciDescriptor, String> {
    if manifest.config.media_type != WASM_CONFIG {
        return Err(format!(
            "not a Wasm component artifact: its config is `{}`, not `{WASM_CONFIG}`",
            manifest.config.media_type
        ));
    }
    match manifest.layers.as_slice() {
        [layer] if layer.media_type == WASM_LAYER => Ok(layer),
        [layer] => Err(format!("its layer is `{}`, not `{WASM_LAYER}`", layer.media_type)),
        layers => Err(format!("it has {} layers; a component artifact has one", layers.len())),
    }
}

fn not_found(e: &OciDistributionError) -> bool {
    match e {
        OciDistributionError::ImageManifestNotFoundError(_) => true,
        OciDistributionError::ServerError { code, .. } => *code == 404,
        OciDistributionError::RegistryError { envelope, .. } => envelope
            .errors
            .iter()
            .any(|e| matches!(e.code, oci_client::errors::OciErrorCode::ManifestUnknown)),
        _ => false,
    }
}

fn failure(reference: &Reference, e: OciDistributionError) -> OciError {
    match &e {
        OciDistributionError::RequestError(request) if request.is_connect() || request.is_timeout() => {
            OciError::Unreachable {
                registry: reference.registry().to_owned(),
                reason: full_chain(request),
            }
        }
        _ if not_found(&e) => OciError::Registry(format!("`{}` is not in the registry", reference.whole())),
        _ => OciError::Registry(format!("`{}`: {e}", reference.whole())),
    }
}

/// An error with its sources, `: `-separated (reqwest's own message hides the cause).
fn full_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The credentials a docker-style `config.json` holds for `registry`, if any.
fn credentials(file: &Path, registry: &str) -> Result<Option<RegistryAuth>, OciError> {
    #[derive(Deserialize)]
    struct DockerConfig {
        #[serde(default)]
        auths: std::collections::BTreeMap<String, Entry>,
    }
    #[derive(Deserialize)]
    struct Entry {
        auth: Option<String>,
        username: Option<String>,
        password: Option<String>,
    }
    let unusable = |reason: String| OciError::Credentials(format!("credentials file `{}`: {reason}", file.display()));
    let text = std::fs::read_to_string(file).map_err(|e| unusable(e.to_string()))?;
    let config: DockerConfig = serde_json::from_str(&text).map_err(|e| unusable(e.to_string()))?;
    let entry = config.auths.iter().find(|(host, _)| {
        let host = host
            .trim_start_matches("https://")
            .trim_start_matches("http://")
            .trim_end_matches('/');
        host == registry
    });
    let Some((_, entry)) = entry else {
        return Ok(None);
    };
    if let (Some(user), Some(password)) = (&entry.username, &entry.password) {
        return Ok(Some(RegistryAuth::Basic(user.clone(), password.clone())));
    }
    let auth = entry.auth.as_ref().ok_or_else(|| {
        unusable(format!(
            "the entry for `{registry}` has neither `auth` nor `username` and `password`"
        ))
    })?;
    use base64::Engine as _;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(auth.trim())
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .ok_or_else(|| unusable(format!("the `auth` of `{registry}` is not base64 text")))?;
    let (user, password) = decoded
        .split_once(':')
        .ok_or_else(|| unusable(format!("the `auth` of `{registry}` is not `USER:PASSWORD`")))?;
    Ok(Some(RegistryAuth::Basic(user.to_owned(), password.to_owned())))
}
