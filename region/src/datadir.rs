//! A region's data directory:
//!
//! ```text
//! identity.json   cluster id, node id, name, advertised and listen addresses, joined flag
//! tls/ca.crt      cluster CA certificate
//! tls/region.crt  this region's certificate (CN region-<id>)
//! tls/region.key  its private key (0600; created here, never sent anywhere)
//! admin.token     the admin bearer token (0600; first region only)
//! bootstrap.json  the bootstrap command until it is applied (first region only)
//! db/             sled: Raft log, vote, snapshots
//! run.json        pid, addresses, readiness of the running process (for tools and tests)
//! blobs/          image files by SHA-256 (0700; `crate::blobs::BlobStore`), copied from other regions
//! ```
//!
//! The directory, `tls/` and `db/` are mode 0700 ([`DataDir::secure`]): `db/` holds the replicated state,
//! which includes the cluster CA key and the hashes of every token, and sled creates its files with the
//! process umask; a directory nobody else can enter keeps them private whatever that umask is.

use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Why the data directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    /// Reading or writing a file failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// The action.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A file is not what it should be.
    #[error("{path} is corrupt ({detail}): restore the data directory from a backup, or remove this region from the cluster and join it again with an empty directory")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// `init` or `join` on a directory that already holds a region.
    #[error("{0} already holds a region (identity.json exists): start it with `ingot-region run --data-dir {0}`, or use an empty directory")]
    NotEmpty(String),
    /// `run` on a directory that holds none.
    #[error("{0} holds no region (no identity.json): create a cluster with `ingot-region init` or join one with `ingot-region join`")]
    NoIdentity(String),
}

/// Who this region is; written once at init/join.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct RegionIdentity {
    /// The cluster this directory belongs to.
    pub cluster_id: String,
    /// Raft node id.
    pub node_id: u64,
    /// Region name.
    pub name: String,
    /// Advertised API address.
    pub api_addr: String,
    /// Advertised Raft address (as recorded in the membership).
    pub raft_addr: String,
    /// Where to listen for the API by default.
    pub listen_api: String,
    /// Where to listen for Raft by default.
    pub listen_raft: String,
    /// True once the region has been added to the membership (false between admission and promotion).
    pub joined: bool,
    /// Raft addresses of the members at admission: whom to ask for promotion if `run` finds `joined`
    /// still false (the process stopped between admission and promotion).
    #[serde(default)]
    pub join_via: Vec<String>,
}

/// What a running region publishes about itself in run.json.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct RunInfo {
    /// Process id.
    pub pid: u32,
    /// 0 until known.
    pub node_id: u64,
    /// Actual API address.
    pub api_addr: String,
    /// Actual Raft address.
    pub raft_addr: String,
    /// Serving and a member.
    pub ready: bool,
}

/// Paths and file I/O of a data directory.
#[derive(Clone, Debug)]
pub struct DataDir {
    /// The directory.
    pub root: PathBuf,
}

impl DataDir {
    /// The data directory at `root` (not created yet).
    pub fn new(root: impl Into<PathBuf>) -> DataDir {
        DataDir { root: root.into() }
    }
    /// identity.json
    pub fn identity_path(&self) -> PathBuf {
        self.root.join("identity.json")
    }
    /// tls/ca.crt
    pub fn ca_path(&self) -> PathBuf {
        self.root.join("tls/ca.crt")
    }
    /// tls/region.crt
    pub fn cert_path(&self) -> PathBuf {
        self.root.join("tls/region.crt")
    }
    /// tls/region.key
    pub fn key_path(&self) -> PathBuf {
        self.root.join("tls/region.key")
    }
    /// admin.token
    pub fn admin_token_path(&self) -> PathBuf {
        self.root.join("admin.token")
    }
    /// bootstrap.json
    pub fn bootstrap_path(&self) -> PathBuf {
        self.root.join("bootstrap.json")
    }
    /// db/
    pub fn db_path(&self) -> PathBuf {
        self.root.join("db")
    }
    /// removed: present once the cluster removed this region (its content says why).
    pub fn removed_path(&self) -> PathBuf {
        self.root.join("removed")
    }
    /// run.json
    pub fn run_path(&self) -> PathBuf {
        self.root.join("run.json")
    }

    /// Fails unless no region lives here yet; creates the directory and `tls/` (mode 0700, also when the
    /// directory existed already: a launcher may have made it with its umask).
    pub fn ensure_fresh(&self) -> Result<(), DataDirError> {
        if self.identity_path().exists() || self.db_path().exists() {
            return Err(DataDirError::NotEmpty(self.root.display().to_string()));
        }
        private_dir(&self.root)?;
        private_dir(&self.root.join("tls"))
    }

    /// Makes the directory, `tls/` and `db/` mode 0700, creating the missing ones. Runs before the
    /// database is opened at every start, so a directory made by an older version is tightened too.
    pub fn secure(&self) -> Result<(), DataDirError> {
        private_dir(&self.root)?;
        private_dir(&self.root.join("tls"))?;
        private_dir(&self.db_path())
    }

    /// Reads identity.json.
    pub fn read_identity(&self) -> Result<RegionIdentity, DataDirError> {
        let p = self.identity_path();
        if !p.exists() {
            return Err(DataDirError::NoIdentity(self.root.display().to_string()));
        }
        let b = std::fs::read(&p).map_err(|source| DataDirError::Io {
            what: "reading",
            path: p.clone(),
            source,
        })?;
        serde_json::from_slice(&b).map_err(|e| DataDirError::Corrupt {
            path: p,
            detail: e.to_string(),
        })
    }

    /// Writes identity.json atomically.
    pub fn write_identity(&self, id: &RegionIdentity) -> Result<(), DataDirError> {
        let b = serde_json::to_vec_pretty(id).map_err(|e| DataDirError::Corrupt {
            path: self.identity_path(),
            detail: e.to_string(),
        })?;
        write_atomic(&self.identity_path(), &b, false)
    }

    /// Writes run.json atomically.
    pub fn write_run(&self, info: &RunInfo) -> Result<(), DataDirError> {
        let b = serde_json::to_vec(info).map_err(|e| DataDirError::Corrupt {
            path: self.run_path(),
            detail: e.to_string(),
        })?;
        write_atomic(&self.run_path(), &b, false)
    }

    /// Reads a text file of the directory.
    pub fn read(&self, p: &Path) -> Result<String, DataDirError> {
        std::fs::read_to_string(p).map_err(|source| DataDirError::Io {
            what: "reading",
            path: p.to_path_buf(),
            source,
        })
    }

    /// Writes a file atomically; `secret` files get mode 0600.
    pub fn write(&self, p: &Path, contents: &[u8], secret: bool) -> Result<(), DataDirError> {
        write_atomic(p, contents, secret)
    }
}

/// Mode of the data directory and of `tls/` and `db/`: only the region's user may enter.
const PRIVATE_DIR_MODE: u32 = 0o700;
/// Mode of files holding a key or a token.
const SECRET_FILE_MODE: u32 = 0o600;

/// Creates `dir` (and its parents) if missing and sets its mode to [`PRIVATE_DIR_MODE`].
fn private_dir(dir: &Path) -> Result<(), DataDirError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let io = |what, source| DataDirError::Io {
        what,
        path: dir.to_path_buf(),
        source,
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(PRIVATE_DIR_MODE)
        .create(dir)
        .map_err(|e| io("creating", e))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(PRIVATE_DIR_MODE))
        .map_err(|e| io("setting mode 0700 on", e))
}

fn write_atomic(p: &Path, contents: &[u8], secret: bool) -> Result<(), DataDirError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let tmp = p.with_extension("tmp");
    let io = |what, source| DataDirError::Io {
        what,
        path: p.to_path_buf(),
        source,
    };
    if let Some(dir) = p.parent() {
        std::fs::create_dir_all(dir).map_err(|e| io("creating the directory of", e))?;
    }
    // A temporary file left by a crash keeps its old mode when opened again: start from a new one.
    let _ = std::fs::remove_file(&tmp);
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    if secret {
        opts.mode(SECRET_FILE_MODE);
    }
    let mut f = opts.open(&tmp).map_err(|e| io("creating", e))?;
    if secret {
        f.set_permissions(std::fs::Permissions::from_mode(SECRET_FILE_MODE))
            .map_err(|e| io("setting mode 0600 on", e))?;
    }
    f.write_all(contents).map_err(|e| io("writing", e))?;
    f.sync_all().map_err(|e| io("syncing", e))?;
    std::fs::rename(&tmp, p).map_err(|e| io("renaming into", e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).expect("exists").permissions().mode() & 0o777
    }

    #[test]
    fn directories_are_private_and_secret_files_0600() {
        let t = tempfile::tempdir().expect("tempdir");
        let root = t.path().join("region");
        // A launcher created the directory with a permissive mode before `init` ran.
        std::fs::create_dir(&root).expect("mkdir");
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let dd = DataDir::new(&root);
        dd.ensure_fresh().expect("fresh");
        assert_eq!(mode(&root), 0o700, "data directory");
        assert_eq!(mode(&root.join("tls")), 0o700, "tls/");
        dd.secure().expect("secure");
        assert_eq!(mode(&dd.db_path()), 0o700, "db/");
        // A stale temporary file with a wide mode does not lend it to a key.
        std::fs::write(dd.key_path().with_extension("tmp"), b"old").expect("stale tmp");
        std::fs::set_permissions(
            dd.key_path().with_extension("tmp"),
            std::fs::Permissions::from_mode(0o644),
        )
        .expect("chmod");
        dd.write(&dd.key_path(), b"key", true).expect("key");
        dd.write(&dd.admin_token_path(), b"token", true)
            .expect("token");
        assert_eq!(mode(&dd.key_path()), 0o600, "tls/region.key");
        assert_eq!(mode(&dd.admin_token_path()), 0o600, "admin.token");
        // A directory made by an older version (0755 everywhere) is tightened at the next start.
        for d in [&root, &root.join("tls"), &dd.db_path()] {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        }
        dd.secure().expect("secure");
        for d in [&root, &root.join("tls"), &dd.db_path()] {
            assert_eq!(mode(d), 0o700, "{}", d.display());
        }
    }
}
