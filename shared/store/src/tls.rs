//! TLS to PostgreSQL as libpq does it, with rustls: `sslmode`, `sslrootcert` and a
//! client certificate (`sslcert`, `sslkey`) are read from `DATABASE_URL`, which the
//! PostgreSQL client library itself reads only in part (it knows `disable`, `prefer`
//! and `require`, and no certificates).
//!
//! | `sslmode` | encrypted | server certificate checked |
//! |---|---|---|
//! | `disable` | no | — |
//! | `prefer` (the default) | when the server offers it | no |
//! | `require` | yes | no; against `sslrootcert` when one is given (as libpq) |
//! | `verify-ca` | yes | signed by a trusted CA |
//! | `verify-full` | yes | signed by a trusted CA, and issued for the host |
//!
//! The trusted CAs are `sslrootcert` (a PEM file), or the system's when it is absent or
//! `system`.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio_postgres::config::SslMode;

use crate::StoreError;

/// How much TLS `DATABASE_URL` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Plain text.
    Disable,
    /// TLS when the server offers it, unchecked.
    Prefer,
    /// TLS, unchecked (checked against `sslrootcert` when one is given).
    Require,
    /// TLS with a certificate signed by a trusted CA.
    VerifyCa,
    /// TLS with a certificate signed by a trusted CA and issued for the host.
    VerifyFull,
}

/// The TLS parameters of a `DATABASE_URL`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tls {
    /// `sslmode`.
    pub mode: Mode,
    /// `sslrootcert`: a PEM file of trusted CAs, or `system`.
    pub rootcert: Option<String>,
    /// `sslcert`: the client certificate (PEM), for servers that ask for one.
    pub cert: Option<String>,
    /// `sslkey`: the client certificate's key (PEM).
    pub key: Option<String>,
}

const KEYS: [&str; 4] = ["sslmode", "sslrootcert", "sslcert", "sslkey"];

/// Takes the TLS parameters out of `url` (a `postgres://` URL or `key=value` pairs);
/// returns what remains, for the client library, and them.
pub fn split(url: &str) -> Result<(String, Tls), StoreError> {
    let mut found: Vec<(String, String)> = Vec::new();
    let rest = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        match url.split_once('?') {
            None => url.to_string(),
            Some((base, query)) => {
                let mut kept = Vec::new();
                for pair in query.split('&').filter(|p| !p.is_empty()) {
                    let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                    if KEYS.contains(&k) {
                        found.push((k.to_string(), decode(v)));
                    } else {
                        kept.push(pair);
                    }
                }
                if kept.is_empty() {
                    base.to_string()
                } else {
                    format!("{base}?{}", kept.join("&"))
                }
            }
        }
    } else {
        let mut kept = Vec::new();
        for pair in url.split_whitespace() {
            match pair.split_once('=') {
                Some((k, v)) if KEYS.contains(&k) => {
                    found.push((k.to_string(), v.trim_matches('\'').to_string()))
                }
                _ => kept.push(pair),
            }
        }
        kept.join(" ")
    };
    let mut tls = Tls {
        mode: Mode::Prefer,
        rootcert: None,
        cert: None,
        key: None,
    };
    for (k, v) in found {
        match k.as_str() {
            "sslmode" => {
                tls.mode = match v.as_str() {
                    "disable" => Mode::Disable,
                    "allow" | "prefer" => Mode::Prefer,
                    "require" => Mode::Require,
                    "verify-ca" => Mode::VerifyCa,
                    "verify-full" => Mode::VerifyFull,
                    other => {
                        return Err(StoreError::Config(format!(
                        "sslmode `{other}`: use disable, prefer, require, verify-ca or verify-full"
                    )))
                    }
                }
            }
            "sslrootcert" => tls.rootcert = Some(v),
            "sslcert" => tls.cert = Some(v),
            _ => tls.key = Some(v),
        }
    }
    if tls.cert.is_some() != tls.key.is_some() {
        return Err(StoreError::Config(
            "sslcert and sslkey go together: give both, or neither".into(),
        ));
    }
    Ok((rest, tls))
}

/// `DATABASE_URL` as a log may show it: the password masked, in either form.
pub fn shown(url: &str) -> String {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        if let Some((scheme, rest)) = url.split_once("://") {
            if let Some((userinfo, host)) = rest.rsplit_once('@') {
                if let Some((user, _)) = userinfo.split_once(':') {
                    return format!("{scheme}://{user}:***@{host}");
                }
            }
        }
        return url.to_string();
    }
    url.split_whitespace()
        .map(|pair| match pair.split_once('=') {
            Some(("password", _)) => "password=***".to_string(),
            _ => pair.to_string(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Percent-decodes a URL query value (a path may be written `%2Ftmp%2Fca.pem`).
fn decode(v: &str) -> String {
    let bytes = v.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = |j: usize| bytes.get(j).and_then(|b| char::from(*b).to_digit(16));
            if let (Some(h), Some(l)) = (hex(i + 1), hex(i + 2)) {
                out.push(u8::try_from(h * 16 + l).unwrap_or(b'?'));
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Tls {
    /// The client library's own setting for this mode.
    pub(crate) fn ssl_mode(&self) -> SslMode {
        match self.mode {
            Mode::Disable => SslMode::Disable,
            Mode::Prefer => SslMode::Prefer,
            Mode::Require | Mode::VerifyCa | Mode::VerifyFull => SslMode::Require,
        }
    }

    /// The rustls connector this mode calls for, certificates read now: a missing or
    /// unreadable file is a configuration error at start, not a failure later.
    pub(crate) fn connector(&self) -> Result<tokio_postgres_rustls::MakeRustlsConnect, StoreError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier: Arc<dyn ServerCertVerifier> = match (self.mode, &self.rootcert) {
            (Mode::Disable | Mode::Prefer, _) | (Mode::Require, None) => Arc::new(Lenient {
                chain: None,
                provider: provider.clone(),
            }),
            (Mode::Require, Some(_)) | (Mode::VerifyCa, _) => Arc::new(Lenient {
                chain: Some(self.webpki(&provider)?),
                provider: provider.clone(),
            }),
            (Mode::VerifyFull, _) => self.webpki(&provider)?,
        };
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| StoreError::Config(format!("TLS: {e}")))?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let config = match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => {
                let chain = certificates(cert, "sslcert")?;
                let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
                    StoreError::Config(format!("sslkey {key}: no PEM private key read: {e}"))
                })?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| StoreError::Config(format!("sslcert/sslkey: {e}")))?
            }
            _ => builder.with_no_client_auth(),
        };
        Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
    }

    fn webpki(
        &self,
        provider: &Arc<CryptoProvider>,
    ) -> Result<Arc<WebPkiServerVerifier>, StoreError> {
        let mut roots = RootCertStore::empty();
        match self.rootcert.as_deref() {
            None | Some("system") => {
                let native = rustls_native_certs::load_native_certs();
                for cert in native.certs {
                    let _ = roots.add(cert);
                }
                if roots.is_empty() {
                    return Err(StoreError::Config(
                        "no system CA certificates found; give sslrootcert=/path/to/ca.pem".into(),
                    ));
                }
            }
            Some(path) => {
                for cert in certificates(path, "sslrootcert")? {
                    roots
                        .add(cert)
                        .map_err(|e| StoreError::Config(format!("sslrootcert {path}: {e}")))?;
                }
            }
        }
        WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .map_err(|e| StoreError::Config(format!("TLS: {e}")))
    }
}

fn certificates(path: &str, setting: &str) -> Result<Vec<CertificateDer<'static>>, StoreError> {
    let read = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| StoreError::Config(format!("{setting} {path}: {e}")))?;
    if read.is_empty() {
        return Err(StoreError::Config(format!(
            "{setting} {path}: no PEM certificate in it"
        )));
    }
    Ok(read)
}

/// What libpq checks short of `verify-full`: nothing (`prefer`, `require`), or the
/// chain against the trusted CAs but not the host name (`verify-ca`, or `require` with
/// `sslrootcert`). The handshake's signatures are verified either way.
#[derive(Debug)]
struct Lenient {
    chain: Option<Arc<WebPkiServerVerifier>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Lenient {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
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
        let algorithms = &self.provider.signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(message, cert, dss, algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(message, cert, dss, algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tls_parameters_are_taken_out_of_a_url() {
        let (rest, tls) = split(
            "postgres://u@h:5432/db?application_name=x&sslmode=verify-full&sslrootcert=%2Ftmp%2Fca.pem",
        )
        .expect("valid");
        assert_eq!(rest, "postgres://u@h:5432/db?application_name=x");
        assert_eq!(tls.mode, Mode::VerifyFull);
        assert_eq!(tls.rootcert.as_deref(), Some("/tmp/ca.pem"));
        let (rest, tls) = split("postgres://u@h/db?sslmode=require").expect("valid");
        assert_eq!(rest, "postgres://u@h/db");
        assert_eq!(tls.mode, Mode::Require);
    }

    #[test]
    fn and_out_of_key_value_pairs() {
        let (rest, tls) =
            split("host=h user=u sslmode=verify-ca sslrootcert='/ca.pem' dbname=d").expect("valid");
        assert_eq!(rest, "host=h user=u dbname=d");
        assert_eq!(tls.mode, Mode::VerifyCa);
        assert_eq!(tls.rootcert.as_deref(), Some("/ca.pem"));
    }

    #[test]
    fn a_password_is_never_shown() {
        assert_eq!(
            shown("postgres://u:s3cret@h:5432/db?sslmode=require"),
            "postgres://u:***@h:5432/db?sslmode=require"
        );
        assert_eq!(
            shown("host=h password=s3cret user=u"),
            "host=h password=*** user=u"
        );
        assert_eq!(shown("postgres://u@h/db"), "postgres://u@h/db");
    }

    #[test]
    fn prefer_is_the_default_as_in_libpq() {
        let (rest, tls) = split("postgres://u@h/db").expect("valid");
        assert_eq!(rest, "postgres://u@h/db");
        assert_eq!(tls.mode, Mode::Prefer);
        assert_eq!(tls.ssl_mode(), SslMode::Prefer);
    }

    #[test]
    fn wrong_parameters_say_what_is_wrong() {
        let e = split("postgres://h/db?sslmode=verify_full")
            .expect_err("typo")
            .to_string();
        assert!(e.contains("sslmode `verify_full`"), "{e}");
        let e = split("postgres://h/db?sslcert=/c.pem")
            .expect_err("no key")
            .to_string();
        assert!(e.contains("sslcert and sslkey go together"), "{e}");
        let (_, tls) = split("postgres://h/db?sslmode=verify-full&sslrootcert=/nonexistent.pem")
            .expect("parsed");
        let e = tls.connector().err().expect("unreadable").to_string();
        assert!(e.contains("sslrootcert /nonexistent.pem"), "{e}");
    }
}
