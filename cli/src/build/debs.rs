//! Debian packages for the builders: resolve names with `apt-cache`, download with `apt-get download`
//! into a cache (re-used while the candidate version is the same), unpack with `dpkg-deb -x`; and the
//! shared libraries a binary links, found with `ldd` (the ELF interpreter's `--list`).

use super::Steps;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Runs `cmd`, returning stdout; the error names the command and shows its stderr, then `hint`.
pub(crate) fn run(cmd: &mut Command, hint: &str) -> Result<String> {
    let shown = format!("{cmd:?}").replace('"', "");
    let out = cmd
        .output()
        .with_context(|| format!("running {shown}: {hint}"))?;
    if !out.status.success() {
        bail!(
            "{shown} failed ({}): {}\n{hint}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The .deb cache and the apt client.
pub(crate) struct Debs {
    cache: PathBuf,
}

impl Debs {
    /// The cache at `dir`, default ~/.cache/ingot/debs; created if missing.
    pub(crate) fn new(dir: Option<&Path>) -> Result<Debs> {
        let cache = match dir {
            Some(d) => d.to_path_buf(),
            None => {
                let home = std::env::var_os("HOME").map(PathBuf::from).ok_or_else(|| {
                    anyhow::anyhow!("HOME is not set: pass --cache DIR for the downloaded packages")
                })?;
                home.join(".cache/ingot/debs")
            }
        };
        std::fs::create_dir_all(&cache)
            .with_context(|| format!("creating the package cache {}", cache.display()))?;
        Ok(Debs { cache })
    }

    /// The .debs of the packages' candidate versions, downloaded (in one `apt-get download`) unless
    /// the cache has them. In the order asked.
    pub(crate) fn fetch(&self, pkgs: &[&str], steps: &Steps) -> Result<Vec<PathBuf>> {
        let show = run(
            Command::new("apt-cache")
                .args(["show", "--no-all-versions"])
                .args(pkgs),
            &format!(
                "apt-cache found no package among {}: run apt-get update (as root), or check the names",
                pkgs.join(" ")
            ),
        )?;
        // One stanza per package: Package, Version, Architecture.
        let mut found: Vec<(String, String, String)> = Vec::new();
        for stanza in show.split("\n\n") {
            let field = |name: &str| {
                stanza
                    .lines()
                    .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()))
            };
            if let (Some(p), Some(v), Some(a)) =
                (field("Package:"), field("Version:"), field("Architecture:"))
            {
                found.push((p, v, a));
            }
        }
        let mut files = Vec::new();
        let mut missing = Vec::new();
        for pkg in pkgs {
            let Some((_, version, arch)) = found.iter().find(|(p, _, _)| p == pkg) else {
                bail!("apt-cache show {pkg} printed no Version/Architecture: run apt-get update, or check the name");
            };
            let file = self
                .cache
                .join(format!("{pkg}_{}_{arch}.deb", version.replace(':', "%3a")));
            if !file.is_file() {
                missing.push(format!("{pkg}={version}"));
            }
            files.push(file);
        }
        if missing.is_empty() {
            steps.step(format!("cached: {}", pkgs.join(" ")));
        } else {
            steps.step(format!("apt-get download {}", missing.join(" ")));
            let kernel = pkgs.iter().any(|p| p.starts_with("linux-image"));
            run(
                Command::new("apt-get")
                    .args(["download", "-q", "-o", "APT::Sandbox::User=root"])
                    .args(&missing)
                    .current_dir(&self.cache),
                &format!(
                    "apt-get download {} failed: run apt-get update and check the apt sources reach the Debian registry{}",
                    missing.join(" "),
                    if kernel { ", or pass --kernel-package" } else { "" }
                ),
            )?;
        }
        for f in &files {
            if !f.is_file() {
                bail!(
                    "apt-get download succeeded but {} is not there",
                    f.display()
                );
            }
        }
        Ok(files)
    }

    /// Downloads each (package, directory) pair's package and unpacks it there (`dpkg-deb -x`: files
    /// only, no maintainer scripts run).
    pub(crate) fn unpack(&self, what: &[(&str, &Path)], steps: &Steps) -> Result<()> {
        let pkgs: Vec<&str> = what.iter().map(|(p, _)| *p).collect();
        let debs = self.fetch(&pkgs, steps)?;
        for (deb, (pkg, root)) in debs.iter().zip(what) {
            steps.step(format!("unpacking {pkg}"));
            std::fs::create_dir_all(root)?;
            run(
                Command::new("dpkg-deb").arg("-x").arg(deb).arg(root),
                "dpkg-deb is Debian's package tool: install dpkg",
            )?;
        }
        Ok(())
    }
}

/// The real package behind the `linux-image-amd64` metapackage (e.g. linux-image-6.1.0-57-amd64), or
/// `explicit`.
pub(crate) fn kernel_package(explicit: Option<&str>) -> Result<String> {
    if let Some(p) = explicit {
        return Ok(p.to_string());
    }
    let deps = run(
        Command::new("apt-cache").args(["depends", "linux-image-amd64"]),
        "apt-cache depends linux-image-amd64 failed: run apt-get update, or pass --kernel-package",
    )?;
    deps.lines()
        .find_map(|l| {
            let d = l.trim().strip_prefix("Depends: ")?;
            (d.starts_with("linux-image-") && d.as_bytes().get(12).is_some_and(u8::is_ascii_digit))
                .then(|| d.to_string())
        })
        .ok_or_else(|| {
            anyhow::anyhow!(
                "linux-image-amd64 depends on no linux-image-<version> package in the apt lists: run apt-get update, or pass --kernel-package"
            )
        })
}

/// The packages `pkg` depends on directly (first choice of each alternative, no virtual packages).
pub(crate) fn depends(pkg: &str) -> Result<Vec<String>> {
    let out = run(
        Command::new("apt-cache").args(["depends", pkg]),
        &format!("apt-cache depends {pkg} failed: run apt-get update"),
    )?;
    Ok(out
        .lines()
        .filter_map(|l| l.strip_prefix("  Depends: "))
        .filter(|d| !d.starts_with('<'))
        .map(|d| d.trim().to_string())
        .collect())
}

/// One shared library a binary needs: its path in the ramdisk and where to copy it from.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Lib {
    /// Absolute path inside the ramdisk (where the dynamic loader looks for it).
    pub(crate) at: String,
    /// The file on this machine (a symlink is followed when copied).
    pub(crate) from: PathBuf,
}

/// Parses `ldd`'s output. Libraries found under one of `roots` (unpacked packages) are placed at their
/// path relative to that root; others (the host's) at their own path. A "not found" is an error that
/// names the library.
pub(crate) fn parse_ldd(out: &str, roots: &[PathBuf]) -> Result<Vec<Lib>> {
    let mut libs = Vec::new();
    for line in out.lines() {
        let line = line.trim();
        if line.contains("not a dynamic executable") || line.contains("statically linked") {
            return Ok(Vec::new());
        }
        let path = if let Some((name, rest)) = line.split_once(" => ") {
            if rest.trim() == "not found" || rest.starts_with("not found") {
                bail!("{name} not found");
            }
            rest.split(" (").next().unwrap_or("").trim()
        } else {
            line.split(" (").next().unwrap_or("").trim()
        };
        if !path.starts_with('/') {
            continue; // linux-vdso.so.1: provided by the kernel
        }
        let from = PathBuf::from(path);
        let at = roots
            .iter()
            .find_map(|r| from.strip_prefix(r).ok())
            .map(|rel| format!("/{}", rel.display()))
            .unwrap_or_else(|| path.to_string());
        libs.push(Lib { at, from });
    }
    Ok(libs)
}

/// The shared libraries (and the ELF interpreter) `bin` needs, looked up first in the unpacked
/// packages under `roots`, then on the host.
pub(crate) fn shared_libs(bin: &Path, roots: &[PathBuf]) -> Result<Vec<Lib>> {
    let mut dirs = Vec::new();
    for r in roots {
        for d in ["lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu"] {
            dirs.push(r.join(d).display().to_string());
        }
    }
    let out = Command::new("ldd")
        .arg(bin)
        .env("LD_LIBRARY_PATH", dirs.join(":"))
        .output()
        .with_context(|| format!("running ldd {}: install libc-bin", bin.display()))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    parse_ldd(&text, roots).with_context(|| {
        format!(
            "{} needs a shared library that is neither in its packages' dependencies nor on this machine",
            bin.display()
        )
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn ldd_output_places_package_libs_at_their_path_in_the_package() {
        let out = "\tlinux-vdso.so.1 (0x00007ffd)\n\
            \tlibtomcrypt.so.1 => /tmp/w/deps/usr/lib/x86_64-linux-gnu/libtomcrypt.so.1 (0x00007f)\n\
            \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)\n\
            \t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n";
        let libs = parse_ldd(out, &[PathBuf::from("/tmp/w/deps")]).unwrap();
        let at: Vec<_> = libs.iter().map(|l| l.at.as_str()).collect();
        assert_eq!(
            at,
            [
                "/usr/lib/x86_64-linux-gnu/libtomcrypt.so.1",
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib64/ld-linux-x86-64.so.2"
            ]
        );
        assert_eq!(
            libs[0].from,
            PathBuf::from("/tmp/w/deps/usr/lib/x86_64-linux-gnu/libtomcrypt.so.1")
        );
        assert!(parse_ldd("\tnot a dynamic executable\n", &[])
            .unwrap()
            .is_empty());
        let e = parse_ldd("\tlibfoo.so.2 => not found\n", &[]).unwrap_err();
        assert!(e.to_string().contains("libfoo.so.2"));
    }
}
