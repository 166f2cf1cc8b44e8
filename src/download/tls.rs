//! The host's trust store, read the way Go's `crypto/x509` reads it on Linux, so that a host
//! where the Go tool verified S3 (or a TLS-intercepting corporate proxy, or an isolated
//! partition's private CA) verifies here too:
//!
//! * the first readable bundle among the distributions' usual files, or `SSL_CERT_FILE`;
//! * plus every certificate file in `/etc/ssl/certs` and `/etc/pki/tls/certs`, or in the
//!   colon-separated `SSL_CERT_DIR`.
//!
//! The two settings come in as explicit options; nothing here reads the environment.
use rustls::RootCertStore;
use rustls_pki_types::{pem::PemObject, CertificateDer};
use std::path::{Path, PathBuf};

/// Bundle files, in Go's order (Debian/Ubuntu, Fedora/RHEL 6, openSUSE, OpenELEC, RHEL 7+/Amazon
/// Linux, Alpine).
pub const CERT_FILES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/pki/tls/cacert.pem",
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

/// Directories of certificate files (SLES, Fedora/RHEL).
pub const CERT_DIRS: &[&str] = &["/etc/ssl/certs", "/etc/pki/tls/certs"];

/// Where trusted CA certificates come from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustSettings {
    /// `AWS_CA_BUNDLE`: the only trusted certificates (as the AWS SDKs use it), when set.
    pub ca_bundle: Option<PathBuf>,
    /// `SSL_CERT_FILE`: replaces the list of bundle files.
    pub cert_file: Option<PathBuf>,
    /// `SSL_CERT_DIR`: replaces the list of directories.
    pub cert_dirs: Option<Vec<PathBuf>>,
}

impl TrustSettings {
    pub fn files(&self) -> Vec<PathBuf> {
        if let Some(bundle) = &self.ca_bundle {
            return vec![bundle.clone()];
        }
        match &self.cert_file {
            Some(f) => vec![f.clone()],
            None => CERT_FILES.iter().map(PathBuf::from).collect(),
        }
    }
    pub fn dirs(&self) -> Vec<PathBuf> {
        if self.ca_bundle.is_some() {
            return Vec::new();
        }
        match &self.cert_dirs {
            Some(d) => d.clone(),
            None => CERT_DIRS.iter().map(PathBuf::from).collect(),
        }
    }
}

/// Add every parsable certificate of a PEM file; returns how many were added.
fn add_pem(store: &mut RootCertStore, path: &Path) -> std::io::Result<usize> {
    let data = std::fs::read(path)?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&data)
        .filter_map(Result::ok)
        .collect();
    let (added, _ignored) = store.add_parsable_certificates(certs);
    Ok(added)
}

/// Whether a directory entry is a link to a file in the same directory (OpenSSL's hash links:
/// the file they point to is read anyway).
fn links_within(dir: &Path, entry: &Path) -> bool {
    match std::fs::read_link(entry) {
        Ok(target) => {
            let resolved = if target.is_absolute() {
                target
            } else {
                dir.join(target)
            };
            resolved.parent() == Some(dir)
        }
        Err(_) => false,
    }
}

/// Load the trust store. Errors when no certificate at all could be read, naming where it looked.
pub fn load_roots(settings: &TrustSettings) -> Result<(RootCertStore, usize), String> {
    let mut store = RootCertStore::empty();
    if let Some(bundle) = &settings.ca_bundle {
        // Nothing else is trusted: a bundle that cannot be read is an error naming it.
        let n = add_pem(&mut store, bundle)
            .map_err(|e| format!("AWS_CA_BUNDLE {}: {e}", bundle.display()))?;
        if n == 0 {
            return Err(format!(
                "AWS_CA_BUNDLE {}: no PEM certificate in it",
                bundle.display()
            ));
        }
        return Ok((store, n));
    }
    let mut count = 0;
    for file in settings.files() {
        if let Ok(n) = add_pem(&mut store, &file) {
            count += n;
            break;
        }
    }
    for dir in settings.dirs() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        paths.sort();
        for path in paths {
            if links_within(&dir, &path) || !path.is_file() {
                continue;
            }
            count += add_pem(&mut store, &path).unwrap_or(0);
        }
    }
    if store.is_empty() {
        let looked: Vec<String> = settings
            .files()
            .iter()
            .chain(settings.dirs().iter())
            .map(|p| p.display().to_string())
            .collect();
        return Err(format!(
            "no trusted CA certificates found (looked in {}; set SSL_CERT_FILE or SSL_CERT_DIR)",
            looked.join(", ")
        ));
    }
    Ok((store, count))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `AWS_CA_BUNDLE` is the whole trust store; one that cannot be read, or holds no
    /// certificate, is an error naming it.
    #[test]
    fn the_ca_bundle_replaces_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let missing = TrustSettings {
            ca_bundle: Some(dir.path().join("none.pem")),
            cert_file: None,
            cert_dirs: None,
        };
        let err = load_roots(&missing).unwrap_err();
        assert!(
            err.starts_with("AWS_CA_BUNDLE ") && err.contains("none.pem"),
            "{err}"
        );
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "no certificates\n").unwrap();
        let err = load_roots(&TrustSettings {
            ca_bundle: Some(empty),
            ..missing.clone()
        })
        .unwrap_err();
        assert!(err.contains("no PEM certificate"), "{err}");
        let (_, n) = load_roots(&TrustSettings {
            ca_bundle: Some("/etc/ssl/certs/ca-certificates.crt".into()),
            ..missing
        })
        .unwrap();
        assert!(n > 10, "the host bundle alone: {n}");
    }

    #[test]
    fn explicit_settings_replace_the_lists() {
        let t = TrustSettings {
            ca_bundle: None,
            cert_file: Some("/x/ca.pem".into()),
            cert_dirs: Some(vec!["/a".into(), "/b".into()]),
        };
        assert_eq!(t.files(), [PathBuf::from("/x/ca.pem")]);
        assert_eq!(t.dirs(), [PathBuf::from("/a"), PathBuf::from("/b")]);
        let d = TrustSettings::default();
        assert_eq!(d.files().len(), CERT_FILES.len());
        assert_eq!(d.dirs()[0], PathBuf::from("/etc/ssl/certs"));
    }

    #[test]
    fn empty_store_is_an_error_naming_the_places() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("junk.pem"), "not a certificate").unwrap();
        let t = TrustSettings {
            ca_bundle: None,
            cert_file: Some(dir.path().join("missing.pem")),
            cert_dirs: Some(vec![dir.path().to_path_buf()]),
        };
        let err = load_roots(&t).unwrap_err();
        assert!(
            err.contains("missing.pem") && err.contains("SSL_CERT_FILE"),
            "{err}"
        );
    }

    #[test]
    fn host_store() {
        // Whatever the build host has: its bundle loads, or the error names where it looked.
        match CERT_FILES.iter().find(|f| Path::new(f).is_file()) {
            Some(_) => {
                let (store, n) = load_roots(&TrustSettings::default()).expect("host trust store");
                assert!(n > 0 && !store.is_empty());
            }
            None => {
                let err = load_roots(&TrustSettings::default()).unwrap_err();
                assert!(err.contains(CERT_FILES[0]), "{err}");
            }
        }
    }

    #[test]
    fn file_and_directory_with_hash_links() {
        // Two generated CAs in one bundle: as SSL_CERT_FILE, then as the only file of
        // SSL_CERT_DIR next to an OpenSSL-style hash link to it (which must not count twice).
        let dir = tempfile::tempdir().unwrap();
        let bundle = dir.path().join("bundle.pem");
        let pem = format!(
            "{}junk between certificates\n{}",
            ecs_test_support::fake_aws::test_ca_pem("one"),
            ecs_test_support::fake_aws::test_ca_pem("two")
        );
        std::fs::write(&bundle, pem).unwrap();
        let empty = tempfile::tempdir().unwrap();
        let (store, from_file) = load_roots(&TrustSettings {
            ca_bundle: None,
            cert_file: Some(bundle.clone()),
            cert_dirs: Some(vec![empty.path().to_path_buf()]),
        })
        .unwrap();
        assert_eq!((from_file, store.len()), (2, 2));
        std::os::unix::fs::symlink("bundle.pem", dir.path().join("abcd1234.0")).unwrap();
        std::fs::write(dir.path().join("README"), "not a certificate").unwrap();
        let (_, from_dir) = load_roots(&TrustSettings {
            ca_bundle: None,
            cert_file: Some(empty.path().join("none.pem")),
            cert_dirs: Some(vec![dir.path().to_path_buf()]),
        })
        .unwrap();
        assert_eq!(from_dir, 2, "the hash link is skipped");
        // The first readable file of the list wins; later ones are not read.
        let (_, first_only) = load_roots(&TrustSettings {
            ca_bundle: None,
            cert_file: Some(bundle),
            cert_dirs: Some(vec![]),
        })
        .unwrap();
        assert_eq!(first_only, 2);
    }
}
