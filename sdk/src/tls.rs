//! The TLS client configuration every Firehose program uses (the SDK's
//! subscriber, the bridges' publisher, IMAP): a CA file when given, the
//! system's roots otherwise; rustls with ring.

use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Why no TLS configuration could be made; names the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("CA file {path}: {reason}")]
    /// The CA file cannot be read or holds no certificate.
    Ca {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// rustls refused the configuration.
    #[error("TLS: {0}")]
    Rustls(String),
}

/// A rustls client configuration trusting `ca` (PEM, one or more
/// certificates) or, without it, the system's roots.
pub fn client_config(ca: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    match ca {
        Some(path) => {
            let ca_err = |reason: String| TlsError::Ca {
                path: path.to_owned(),
                reason,
            };
            let pem = std::fs::read(path).map_err(|e| ca_err(e.to_string()))?;
            for c in rustls_pemfile::certs(&mut &pem[..]) {
                let c = c.map_err(|e| ca_err(e.to_string()))?;
                roots.add(c).map_err(|e| ca_err(e.to_string()))?;
            }
            if roots.is_empty() {
                return Err(ca_err("no PEM certificates in the file".into()));
            }
        }
        None => {
            for c in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(c);
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Rustls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}
