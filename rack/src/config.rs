//! The rack's data directory: `rack.json` (who the rack is and where the regions are) and `tls/` (its key,
//! its certificate and the cluster CA). `register` creates it; `run` reads it and keeps the region list in
//! `rack.json` current.

use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

/// File names inside the data directory, in one place so `register`, `run` and the README agree.
const RACK_JSON: &str = "rack.json";
const TLS_DIR: &str = "tls";
const CA_CRT: &str = "ca.crt";
const RACK_CRT: &str = "rack.crt";
const RACK_KEY: &str = "rack.key";
const DONE_LOG: &str = "done.log";
const LEASE_JOURNAL: &str = "leases.journal";

/// Why reading or writing the data directory failed. Every variant names the file and what to do.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// `run` was pointed at a directory `register` never completed in.
    #[error(
        "{dir} holds no registered rack (no rack.json): run `ingot-rack register --data-dir {dir} ...` first"
    )]
    NotRegistered {
        /// The data directory.
        dir: String,
    },
    /// `register` was pointed at a directory that already holds a rack; registering again would orphan
    /// that rack's key and certificate.
    #[error(
        "{dir} already holds a registered rack ({path} exists): use another --data-dir, or remove the directory if that rack is gone"
    )]
    AlreadyRegistered {
        /// The data directory.
        dir: String,
        /// The rack.json found there.
        path: String,
    },
    /// A file could not be read.
    #[error("reading {path}: {source} (check that the file exists and is readable by this user)")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A file could not be written (or a directory created).
    #[error("writing {path}: {source} (check free space and permissions of the data directory)")]
    Write {
        /// The file.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// rack.json is not valid JSON of the expected shape.
    #[error("{path} is not a valid rack.json: {source} (restore it or register the rack again)")]
    Parse {
        /// The file.
        path: String,
        /// serde_json's error.
        #[source]
        source: serde_json::Error,
    },
}

/// The contents of `rack.json`: written by `register`, updated by `run` when the regions change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RackConfig {
    /// The rack's name (a DNS label); its certificate's common name is `rack-<name>`.
    pub name: String,
    /// The zone the rack serves; the region assigns it that zone's BMCs first.
    pub zone: String,
    /// API endpoints (`host:port`) of every region, as of registration: for tools that need the API.
    pub api_endpoints: Vec<String>,
    /// Cluster-listener endpoints (`host:port`) of every region: where the session goes. Kept current from
    /// the region's `Welcome` and `Regions` messages so a restarted rack finds the cluster even if the
    /// regions it registered with are gone.
    pub cluster_endpoints: Vec<String>,
    /// When `register` completed (ms since the Unix epoch), for operators.
    pub registered_ms: u64,
}

/// The PEM files of `tls/`, loaded: what the session needs for mutual TLS.
#[derive(Clone)]
pub struct TlsFiles {
    /// The cluster CA certificate: regions are verified against it.
    pub ca_pem: String,
    /// The rack's certificate (CN `rack-<name>`), signed by the cluster CA: the rack's identity.
    pub cert_pem: String,
    /// The rack's private key (never leaves the machine; never printed).
    pub key_pem: String,
}

impl std::fmt::Debug for TlsFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsFiles")
            .field("key_pem", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// A rack data directory: knows where every file lives and how to write them safely.
#[derive(Debug, Clone)]
pub struct DataDir {
    /// The directory given with `--data-dir`.
    root: PathBuf,
}

impl DataDir {
    /// A handle on `root`; nothing is read or created yet.
    pub fn new(root: impl Into<PathBuf>) -> DataDir {
        DataDir { root: root.into() }
    }

    /// The directory itself (for messages).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `rack.json`: the rack's identity and the region endpoints.
    pub fn rack_json(&self) -> PathBuf {
        self.root.join(RACK_JSON)
    }

    /// `tls/ca.crt`: the cluster CA certificate.
    pub fn ca_path(&self) -> PathBuf {
        self.root.join(TLS_DIR).join(CA_CRT)
    }

    /// `tls/rack.crt`: the rack's certificate.
    pub fn cert_path(&self) -> PathBuf {
        self.root.join(TLS_DIR).join(RACK_CRT)
    }

    /// `tls/rack.key`: the rack's private key (mode 0600).
    pub fn key_path(&self) -> PathBuf {
        self.root.join(TLS_DIR).join(RACK_KEY)
    }

    /// `done.log`: the durable record of finished commands (see [`crate::done`]).
    pub fn done_log(&self) -> PathBuf {
        self.root.join(DONE_LOG)
    }

    /// `leases.journal`: leases acknowledged while no region was reachable (see [`crate::boot::journal`]).
    pub fn lease_journal(&self) -> PathBuf {
        self.root.join(LEASE_JOURNAL)
    }

    /// Fails with [`ConfigError::AlreadyRegistered`] if a rack was registered here before.
    pub fn ensure_fresh(&self) -> Result<(), ConfigError> {
        let p = self.rack_json();
        if p.exists() {
            return Err(ConfigError::AlreadyRegistered {
                dir: self.root.display().to_string(),
                path: p.display().to_string(),
            });
        }
        Ok(())
    }

    /// Reads `rack.json`.
    pub fn load_rack(&self) -> Result<RackConfig, ConfigError> {
        let p = self.rack_json();
        let text = match std::fs::read_to_string(&p) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ConfigError::NotRegistered {
                    dir: self.root.display().to_string(),
                })
            }
            Err(source) => return Err(read_err(&p, source)),
        };
        serde_json::from_str(&text).map_err(|source| ConfigError::Parse {
            path: p.display().to_string(),
            source,
        })
    }

    /// Writes `rack.json` atomically (temp file, fsync, rename, fsync of the directory), so a crash leaves
    /// either the old or the new file, never half of one.
    pub fn save_rack(&self, rack: &RackConfig) -> Result<(), ConfigError> {
        let mut text = serde_json::to_string_pretty(rack).map_err(|source| ConfigError::Parse {
            path: self.rack_json().display().to_string(),
            source,
        })?;
        text.push('\n');
        write_atomic(&self.rack_json(), text.as_bytes(), false)
    }

    /// Reads the three PEM files of `tls/`.
    pub fn load_tls(&self) -> Result<TlsFiles, ConfigError> {
        let read = |p: PathBuf| std::fs::read_to_string(&p).map_err(|e| read_err(&p, e));
        Ok(TlsFiles {
            ca_pem: read(self.ca_path())?,
            cert_pem: read(self.cert_path())?,
            key_pem: read(self.key_path())?,
        })
    }

    /// Writes the three PEM files of `tls/` (the key with mode 0600), after making the data directory and
    /// `tls/` private ([`DataDir::secure`]).
    pub fn save_tls(&self, tls: &TlsFiles) -> Result<(), ConfigError> {
        self.secure()?;
        write_atomic(&self.ca_path(), tls.ca_pem.as_bytes(), false)?;
        write_atomic(&self.cert_path(), tls.cert_pem.as_bytes(), false)?;
        write_atomic(&self.key_path(), tls.key_pem.as_bytes(), true)
    }
}

impl DataDir {
    /// Creates the data directory and `tls/` if missing and makes both mode 0700: the key is 0600 itself,
    /// and the done-log and rack.json (BMC results, region addresses) are nobody else's business either.
    /// A launcher may have created the directory with its umask before `register` ran.
    pub fn secure(&self) -> Result<(), ConfigError> {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        for dir in [self.root.clone(), self.root.join(TLS_DIR)] {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
                .and_then(|()| {
                    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
                })
                .map_err(|e| write_err(&dir, e))?;
        }
        Ok(())
    }
}

fn read_err(p: &Path, source: std::io::Error) -> ConfigError {
    ConfigError::Read {
        path: p.display().to_string(),
        source,
    }
}

fn write_err(p: &Path, source: std::io::Error) -> ConfigError {
    ConfigError::Write {
        path: p.display().to_string(),
        source,
    }
}

/// Replaces `path` with `bytes` atomically: write a temp file next to it, fsync, rename over, fsync the
/// directory. `private` makes the file mode 0600 from its creation (keys). Creates missing parents.
pub fn write_atomic(path: &Path, bytes: &[u8], private: bool) -> Result<(), ConfigError> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| write_err(dir, e))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(if private { 0o600 } else { 0o644 });
    }
    // A temporary file left by a crash would keep its old mode: start from a new one.
    let _ = std::fs::remove_file(&tmp);
    let result = (|| {
        let mut f = opts.open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(|e| write_err(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rack_json_roundtrip_and_fresh_check() {
        let d = tempfile::tempdir().unwrap();
        let dd = DataDir::new(d.path());
        assert!(matches!(
            dd.load_rack(),
            Err(ConfigError::NotRegistered { .. })
        ));
        dd.ensure_fresh().unwrap();
        use std::os::unix::fs::PermissionsExt;
        // The launcher made the directory with a permissive umask before `register` ran.
        std::fs::create_dir_all(d.path()).unwrap();
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let rack = RackConfig {
            name: "r1".into(),
            zone: "default".into(),
            api_endpoints: vec!["127.0.0.1:5240".into()],
            cluster_endpoints: vec!["127.0.0.1:5241".into()],
            registered_ms: 1,
        };
        dd.save_rack(&rack).unwrap();
        assert_eq!(dd.load_rack().unwrap(), rack);
        let e = dd.ensure_fresh().unwrap_err().to_string();
        assert!(e.contains("already holds a registered rack"), "{e}");
        dd.save_tls(&TlsFiles {
            ca_pem: "ca".into(),
            cert_pem: "cert".into(),
            key_pem: "key".into(),
        })
        .unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dd.key_path()), 0o600, "tls/rack.key");
        assert_eq!(mode(d.path()), 0o700, "the data directory");
        assert_eq!(mode(&d.path().join(TLS_DIR)), 0o700, "tls/");
        assert_eq!(dd.load_tls().unwrap().key_pem, "key");
    }
}
