//! `dynakv certs init`: a development certificate authority and a
//! certificate per node (and one for clients), made with rcgen, so a local
//! cluster can run with `[tls]` on. Production clusters bring their own CA.

use std::path::{Path, PathBuf};

use dynakv::{Error, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use time::{Duration, OffsetDateTime};

fn cert_error(e: rcgen::Error) -> Error {
    Error::Internal(format!("making a certificate: {e}"))
}

/// How long a certificate is valid.
#[derive(Debug, Clone, Copy)]
pub enum Validity {
    /// From now on, for this many days.
    Days(u32),
    /// A certificate that expired this many days ago (for tests).
    ExpiredDaysAgo(u32),
}

impl Validity {
    fn apply(self, params: &mut CertificateParams) {
        let now = OffsetDateTime::now_utc();
        let (from, to) = match self {
            Validity::Days(days) => (now - Duration::hours(1), now + Duration::days(days.into())),
            Validity::ExpiredDaysAgo(days) => {
                let to = now - Duration::days(days.into());
                (to - Duration::days(30), to)
            }
        };
        params.not_before = from;
        params.not_after = to;
    }
}

/// A certificate authority that signs node and client certificates.
pub struct Authority {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
}

/// A signed certificate and its private key, both PEM.
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

impl Authority {
    pub fn new(name: &str, validity: Validity) -> Result<Authority> {
        let mut params = CertificateParams::new(Vec::new()).map_err(cert_error)?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        validity.apply(&mut params);
        let key = KeyPair::generate().map_err(cert_error)?;
        let cert_pem = params.self_signed(&key).map_err(cert_error)?.pem();
        Ok(Authority {
            issuer: Issuer::new(params, key),
            cert_pem,
        })
    }

    /// The authority whose certificate and key `certs init` wrote (PEM).
    pub fn load(cert_pem: &str, key_pem: &str) -> Result<Authority> {
        let key = KeyPair::from_pem(key_pem).map_err(cert_error)?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key).map_err(cert_error)?;
        Ok(Authority {
            issuer,
            cert_pem: cert_pem.to_string(),
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// A certificate for `name`, valid for `hosts` (DNS names or IP
    /// addresses) as a server and as a client.
    pub fn issue(&self, name: &str, hosts: &[String], validity: Validity) -> Result<Issued> {
        let mut params = CertificateParams::new(hosts.to_vec()).map_err(cert_error)?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        validity.apply(&mut params);
        let key = KeyPair::generate().map_err(cert_error)?;
        let cert = params.signed_by(&key, &self.issuer).map_err(cert_error)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// Writes `contents` to `path`; keys readable by the owner only.
fn write(path: &Path, contents: &str, secret: bool) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(if secret { 0o600 } else { 0o644 })
        .open(path)
        .map_err(|e| Error::InvalidRequest(format!("cannot create {}: {e}", path.display())))?;
    file.write_all(contents.as_bytes())
        .map_err(|e| Error::Storage(format!("writing {}: {e}", path.display())))
}

/// `dynakv certs init`: in `dir` (created if missing; it must not hold a
/// CA yet), `ca.pem` and `ca-key.pem`, then `NAME.pem` and `NAME-key.pem`
/// for each of `nodes` and for `client`. Every certificate names
/// localhost, 127.0.0.1, ::1, its own name and `hosts`. Returns the files
/// written.
pub fn init(dir: &Path, nodes: &[String], hosts: &[String], days: u32) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::InvalidRequest(format!("cannot create {}: {e}", dir.display())))?;
    if dir.join("ca.pem").exists() {
        return Err(Error::InvalidRequest(format!(
            "{} already holds a CA (ca.pem); give another directory",
            dir.display()
        )));
    }
    let mut names: Vec<&str> = nodes.iter().map(String::as_str).collect();
    names.push("client");
    for name in &names {
        if name.is_empty() || name.contains(['/', '\\']) || name.starts_with('.') {
            return Err(Error::InvalidRequest(format!(
                "{name:?} cannot name a certificate file"
            )));
        }
    }
    let validity = Validity::Days(days);
    let ca = Authority::new("dynakv development CA", validity)?;
    let mut written = Vec::new();
    let mut put = |name: String, contents: &str, secret: bool| -> Result<()> {
        let path = dir.join(name);
        write(&path, contents, secret)?;
        written.push(path);
        Ok(())
    };
    put("ca.pem".into(), ca.cert_pem(), false)?;
    put("ca-key.pem".into(), &ca.issuer.key().serialize_pem(), true)?;
    for name in names {
        let mut sans: Vec<String> = ["localhost", "127.0.0.1", "::1", name]
            .map(String::from)
            .to_vec();
        sans.extend(hosts.iter().cloned());
        sans.dedup();
        let issued = ca.issue(name, &sans, validity)?;
        put(format!("{name}.pem"), &issued.cert_pem, false)?;
        put(format!("{name}-key.pem"), &issued.key_pem, true)?;
    }
    Ok(written)
}
