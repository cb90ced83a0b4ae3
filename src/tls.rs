//! TLS: certificates for the TLS listeners, picked by SNI and reloaded with the config, and CA
//! certificates for upstreams.
//!
//! Each TLS listener's rustls config resolves its certificate per handshake from the certificate
//! sets the live snapshot holds ([`SniResolver`], given a way to read them), so a reload that
//! changes a certificate file serves the new certificate to the next handshake, and a reload that
//! fails keeps the old.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use rustls::crypto::ring::sign::any_supported_type;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// One certificate and the names it serves.
#[derive(Debug)]
struct Served {
    /// DNS names from its subject alternative names (or common name), lowercase; `*.` wildcards
    /// kept as written.
    names: Vec<String>,
    key: Arc<CertifiedKey>,
}

/// The certificates of one TLS listener: picked by the SNI name, the first one by default.
#[derive(Debug, Default)]
pub struct CertSet {
    certs: Vec<Served>,
}

impl CertSet {
    /// Adds the certificate chain in `cert` with the private key in `key` (PEM files).
    pub fn add(&mut self, cert: &Path, key: &Path) -> Result<(), String> {
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
            .map_err(|e| format!("cannot read `{}`: {e}", cert.display()))?
            .collect::<Result<_, _>>()
            .map_err(|e| format!("`{}` is not a PEM certificate chain: {e}", cert.display()))?;
        let leaf = chain
            .first()
            .ok_or_else(|| format!("`{}` holds no certificate", cert.display()))?;
        let private = PrivateKeyDer::from_pem_file(key)
            .map_err(|e| format!("cannot read a private key from `{}`: {e}", key.display()))?;
        let signing =
            any_supported_type(&private).map_err(|e| format!("`{}`: unsupported private key: {e}", key.display()))?;
        let certified = CertifiedKey::new(chain.clone(), signing);
        certified.keys_match().map_err(|_| {
            format!(
                "the key in `{}` does not belong to the certificate in `{}`",
                key.display(),
                cert.display()
            )
        })?;
        let names = names_of(leaf).map_err(|e| format!("`{}`: {e}", cert.display()))?;
        self.certs.push(Served {
            names,
            key: Arc::new(certified),
        });
        Ok(())
    }

    /// The certificate for `server_name`: one whose names match it exactly, else one with a
    /// matching wildcard, else the first.
    fn pick(&self, server_name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        if let Some(name) = server_name.map(str::to_ascii_lowercase) {
            let exact = self.certs.iter().find(|c| c.names.contains(&name));
            let wildcard = || {
                let (_, parent) = name.split_once('.')?;
                self.certs
                    .iter()
                    .find(|c| c.names.iter().any(|n| n.strip_prefix("*.") == Some(parent)))
            };
            if let Some(served) = exact.or_else(wildcard) {
                return Some(served.key.clone());
            }
        }
        self.certs.first().map(|c| c.key.clone())
    }

    /// The names each certificate serves, in order (for logs).
    pub fn names(&self) -> Vec<String> {
        self.certs.iter().map(|c| c.names.join(",")).collect()
    }
}

/// The DNS names a certificate is for: its subject alternative names, else its common name.
fn names_of(cert: &CertificateDer<'_>) -> Result<Vec<String>, String> {
    use x509_parser::extensions::GeneralName;
    let (_, parsed) =
        x509_parser::parse_x509_certificate(cert.as_ref()).map_err(|e| format!("cannot parse the certificate: {e}"))?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = parsed.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(dns) => names.push(dns.to_ascii_lowercase()),
                GeneralName::IPAddress(ip) => match ip.len() {
                    4 => names.push(std::net::Ipv4Addr::from(<[u8; 4]>::try_from(*ip).unwrap_or_default()).to_string()),
                    16 => {
                        names.push(std::net::Ipv6Addr::from(<[u8; 16]>::try_from(*ip).unwrap_or_default()).to_string())
                    }
                    _ => {}
                },
                _ => {}
            }
        }
    }
    if names.is_empty() {
        names.extend(
            parsed
                .subject()
                .iter_common_name()
                .filter_map(|cn| cn.as_str().ok())
                .map(str::to_ascii_lowercase),
        );
    }
    Ok(names)
}

/// Every TLS listener's certificates, by address.
pub type Certs = BTreeMap<SocketAddr, Arc<CertSet>>;

/// Loads every TLS listener's certificates from `[server] tls`, relative to `base`, or says which
/// entries (by index) are wrong and why.
pub fn load_certs(
    entries: &[toml::Spanned<crate::config::TlsListener>],
    base: &Path,
) -> Result<Certs, Vec<(usize, String)>> {
    let mut sets: BTreeMap<SocketAddr, CertSet> = BTreeMap::new();
    let mut errors = Vec::new();
    for (index, entry) in entries.iter().enumerate() {
        let entry = entry.get_ref();
        let set = sets.entry(entry.addr.0).or_default();
        if let Err(e) = set.add(&base.join(&entry.cert), &base.join(&entry.key)) {
            errors.push((index, e));
        }
    }
    if errors.is_empty() {
        Ok(sets.into_iter().map(|(addr, set)| (addr, Arc::new(set))).collect())
    } else {
        Err(errors)
    }
}

/// Where a listener finds its current certificate set (the live snapshot's, for its address).
pub type CurrentCerts = Box<dyn Fn() -> Option<Arc<CertSet>> + Send + Sync>;

/// A TLS listener's certificate resolver: the certificate for the client's SNI name from the
/// current set for this address.
pub struct SniResolver {
    addr: SocketAddr,
    current: CurrentCerts,
}

impl std::fmt::Debug for SniResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SniResolver")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl SniResolver {
    /// The resolver of the listener on `addr`, reading its certificates with `current`.
    pub fn new(addr: SocketAddr, current: CurrentCerts) -> Self {
        SniResolver { addr, current }
    }
}

impl ResolvesServerCert for SniResolver {
    /// A client that sends no SNI name (one connecting to an IP address) gets a certificate for
    /// the listener's IP address when there is one.
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let set = (self.current)()?;
        match hello.server_name() {
            Some(name) => set.pick(Some(name)),
            None => set.pick(Some(&self.addr.ip().to_string())),
        }
    }
}

/// The CA certificates in the PEM file `path`, for verifying an upstream, and the file's content.
pub fn load_ca(path: &Path) -> Result<(Arc<pingora::protocols::tls::CaType>, Vec<u8>), String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("`{}` is not a PEM certificate file: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("`{}` holds no certificate", path.display()));
    }
    let wrapped: Vec<pingora::utils::tls::WrappedX509> = certs
        .into_iter()
        .map(|der| {
            pingora::utils::tls::WrappedX509::try_new(der.to_vec(), |raw| {
                x509_parser::parse_x509_certificate(raw).map(|(_, cert)| cert)
            })
            .map_err(|e| format!("`{}`: cannot parse a certificate: {e}", path.display()))
        })
        .collect::<Result<_, _>>()?;
    Ok((Arc::from(wrapped.into_boxed_slice()), pem))
}
