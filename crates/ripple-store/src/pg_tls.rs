//! TLS to Postgres, chosen by the URL as libpq users expect (managed services such as RDS,
//! Cloud SQL, Supabase or Neon require TLS):
//!
//! - `sslmode=disable` (or none given: tokio-postgres' default `prefer` without a TLS
//!   connector is plain TCP): plain TCP.
//! - `sslmode=prefer` / `require`: encrypted, the server's certificate not verified (libpq's
//!   meaning of these modes; `prefer` falls back to plain TCP when the server has no TLS).
//! - `sslmode=verify-ca`: encrypted, the certificate chain verified against `sslrootcert`.
//! - `sslmode=verify-full`: as `verify-ca`, and the certificate must name the host.
//!
//! `sslrootcert` is a PEM file, or `system` for the bundled Mozilla roots (webpki-roots);
//! verification without it uses the bundled roots too. tokio-postgres parses only the first
//! three modes, so the verifying ones (and `sslrootcert`) are taken out of the URL here and
//! become a rustls configuration.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use tokio_postgres_rustls::MakeRustlsConnect;

use ripple_core::StoreError;

/// What the URL asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verify {
    /// Plain TCP (`sslmode=disable`, or no sslmode).
    Plain,
    /// Encrypt, do not verify (`prefer`, `require`).
    Encrypt,
    /// Verify the chain (`verify-ca`) and the host name (`verify-full`).
    Chain { host: bool },
}

/// The URL without the parts tokio-postgres does not parse, and the TLS it asks for.
pub(crate) fn split_url(url: &str) -> Result<(String, Verify, Option<String>), StoreError> {
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_owned(), Verify::Plain, None));
    };
    let mut kept = Vec::new();
    let mut mode = None;
    let mut root = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "sslmode" => mode = Some(v.to_owned()),
            "sslrootcert" => root = Some(percent_decode(v)),
            _ => kept.push(pair),
        }
    }
    let verify = match mode.as_deref() {
        None | Some("disable") => Verify::Plain,
        Some("allow" | "prefer" | "require") => Verify::Encrypt,
        Some("verify-ca") => Verify::Chain { host: false },
        Some("verify-full") => Verify::Chain { host: true },
        Some(other) => {
            return Err(StoreError::Unavailable(format!(
                "invalid postgres url: sslmode={other} (use disable, prefer, require, verify-ca or verify-full)"
            )))
        }
    };
    // tokio-postgres gets the mode it knows: prefer stays prefer, the rest require TLS.
    match (mode.as_deref(), &verify) {
        (Some(m @ ("disable" | "prefer")), _) => kept.push(if m == "disable" {
            "sslmode=disable"
        } else {
            "sslmode=prefer"
        }),
        (_, Verify::Plain) => {}
        _ => kept.push("sslmode=require"),
    }
    let url = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok((url, verify, root))
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(s.get(i + 1..i + 3).unwrap_or(""), 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The rustls connector for `verify` (None for plain TCP).
pub(crate) fn connector(
    verify: &Verify,
    root: Option<&str>,
) -> Result<Option<MakeRustlsConnect>, StoreError> {
    if *verify == Verify::Plain {
        return Ok(None);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| StoreError::Unavailable(format!("postgres tls: {e}")))?;
    let config = match verify {
        Verify::Plain => return Ok(None),
        Verify::Encrypt => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
            .with_no_client_auth(),
        Verify::Chain { host } => {
            let roots = roots(root)?;
            if *host {
                builder.with_root_certificates(roots).with_no_client_auth()
            } else {
                let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                )
                .build()
                .map_err(|e| StoreError::Unavailable(format!("postgres tls: {e}")))?;
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(ChainOnly(inner)))
                    .with_no_client_auth()
            }
        }
    };
    Ok(Some(MakeRustlsConnect::new(config)))
}

fn roots(root: Option<&str>) -> Result<RootCertStore, StoreError> {
    let mut store = RootCertStore::empty();
    match root {
        None | Some("system") => {
            store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        }
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path).map_err(|e| {
                StoreError::Unavailable(format!("postgres tls: sslrootcert {path}: {e}"))
            })?;
            for cert in certs {
                let cert = cert.map_err(|e| {
                    StoreError::Unavailable(format!("postgres tls: sslrootcert {path}: {e}"))
                })?;
                store.add(cert).map_err(|e| {
                    StoreError::Unavailable(format!("postgres tls: sslrootcert {path}: {e}"))
                })?;
            }
            if store.is_empty() {
                return Err(StoreError::Unavailable(format!(
                    "postgres tls: sslrootcert {path} holds no certificate"
                )));
            }
        }
    }
    Ok(store)
}

/// `sslmode=require`: libpq encrypts without verifying the server's certificate. (Signatures
/// are still checked, so the session is with whoever holds the certificate's key.)
#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `sslmode=verify-ca`: the chain must lead to a trusted root; the name is not checked.
#[derive(Debug)]
struct ChainOnly(Arc<rustls::client::WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName
                | rustls::CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_keep_what_tokio_postgres_parses_and_give_the_verification_asked_for() {
        let cases = [
            ("postgres://h/db", "postgres://h/db", Verify::Plain, None),
            (
                "postgres://h/db?sslmode=require&application_name=x",
                "postgres://h/db?application_name=x&sslmode=require",
                Verify::Encrypt,
                None,
            ),
            (
                "postgres://h/db?sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem",
                "postgres://h/db?sslmode=require",
                Verify::Chain { host: true },
                Some("/etc/ca.pem".to_owned()),
            ),
            (
                "postgres://h/db?sslmode=verify-ca",
                "postgres://h/db?sslmode=require",
                Verify::Chain { host: false },
                None,
            ),
            (
                "postgres://h/db?sslmode=disable",
                "postgres://h/db?sslmode=disable",
                Verify::Plain,
                None,
            ),
        ];
        for (url, want_url, want_verify, want_root) in cases {
            let (got_url, verify, root) = split_url(url).expect(url);
            assert_eq!(got_url, want_url, "{url}");
            assert_eq!(verify, want_verify, "{url}");
            assert_eq!(root, want_root, "{url}");
        }
        assert!(split_url("postgres://h/db?sslmode=bogus").is_err());
    }
}
