//! Kernel modules for a ramdisk, from an unpacked Debian kernel package: which files the wanted modules
//! are and, with their dependencies, the order to load them in.
//!
//! Debian's kernel package ships no `modules.dep` (its postinst runs depmod on the installed system), so
//! the dependencies come from each module's own `.modinfo` ELF section (`depends=a,b`), the data depmod
//! itself reads. Pure functions over bytes, plus [`ModuleTree`] which reads the unpacked tree.
//! Compressed modules (`.ko.xz`, `.ko.zst`, `.ko.gz`: Debian's newer kernels) are decompressed at build
//! time with the host's `xz`/`zstd`/`gzip`, so the ramdisk's busybox `insmod` loads plain `.ko` files.

use anyhow::{bail, Context, Result};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The module name the kernel uses: `-` and `_` are the same, and the canonical form uses `_`.
pub fn canonical(name: &str) -> String {
    name.replace('-', "_")
}

/// The module name of a file name (`virtio_blk.ko`, `nls_iso8859-1.ko.xz`), or None for a non-module.
pub fn module_name(file_name: &str) -> Option<String> {
    [".ko", ".ko.xz", ".ko.zst", ".ko.gz"]
        .iter()
        .find_map(|ext| file_name.strip_suffix(ext))
        .map(canonical)
}

/// Reads a little-endian integer of `N` bytes at `at`, or None past the end.
fn le(b: &[u8], at: usize, n: usize) -> Option<u64> {
    let s = b.get(at..at.checked_add(n)?)?;
    Some(s.iter().rev().fold(0u64, |v, &x| (v << 8) | u64::from(x)))
}

/// The `.modinfo` section of an ELF64 little-endian module, or None if `elf` is not one or has none.
/// Every offset is checked against the input.
pub fn modinfo_section(elf: &[u8]) -> Option<&[u8]> {
    if elf.get(..4)? != b"\x7fELF" || *elf.get(4)? != 2 || *elf.get(5)? != 1 {
        return None; // not ELF64 little-endian
    }
    let shoff = usize::try_from(le(elf, 0x28, 8)?).ok()?;
    let shentsize = usize::try_from(le(elf, 0x3a, 2)?).ok()?;
    let shnum = usize::try_from(le(elf, 0x3c, 2)?).ok()?;
    let shstrndx = usize::try_from(le(elf, 0x3e, 2)?).ok()?;
    if shentsize < 0x40 {
        return None;
    }
    let section = |i: usize| -> Option<(u64, usize, usize)> {
        let h = shoff.checked_add(i.checked_mul(shentsize)?)?;
        let name = le(elf, h, 4)?;
        let off = usize::try_from(le(elf, h + 0x18, 8)?).ok()?;
        let size = usize::try_from(le(elf, h + 0x20, 8)?).ok()?;
        Some((name, off, size))
    };
    let (_, stroff, strsize) = section(shstrndx)?;
    let strtab = elf.get(stroff..stroff.checked_add(strsize)?)?;
    (0..shnum).find_map(|i| {
        let (name, off, size) = section(i)?;
        let n = strtab.get(usize::try_from(name).ok()?..)?;
        let end = n.iter().position(|&c| c == 0)?;
        if &n[..end] != b".modinfo" {
            return None;
        }
        elf.get(off..off.checked_add(size)?)
    })
}

/// The canonical names in a module's `depends=` field (empty when it has none).
pub fn depends(elf: &[u8]) -> Vec<String> {
    let Some(info) = modinfo_section(elf) else {
        return Vec::new();
    };
    info.split(|&c| c == 0)
        .filter_map(|kv| kv.strip_prefix(b"depends="))
        .flat_map(|v| {
            String::from_utf8_lossy(v)
                .split(',')
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .filter(|d| !d.is_empty())
        .map(|d| canonical(&d))
        .collect()
}

/// Orders `wanted` and their dependencies so each module comes after what it depends on (depth-first,
/// dependencies first, each once). `deps` answers a module's dependencies; names it does not know
/// (built into the kernel, or absent) are returned in the second list instead.
pub fn load_order(
    wanted: &[&str],
    mut deps: impl FnMut(&str) -> Option<Vec<String>>,
) -> (Vec<String>, Vec<String>) {
    fn visit(
        m: &str,
        deps: &mut dyn FnMut(&str) -> Option<Vec<String>>,
        seen: &mut BTreeSet<String>,
        order: &mut Vec<String>,
        missing: &mut Vec<String>,
    ) {
        if !seen.insert(m.to_string()) {
            return;
        }
        match deps(m) {
            None => missing.push(m.to_string()),
            Some(ds) => {
                for d in ds {
                    visit(&d, deps, seen, order, missing);
                }
                order.push(m.to_string());
            }
        }
    }
    let mut seen = BTreeSet::new();
    let (mut order, mut missing) = (Vec::new(), Vec::new());
    for w in wanted {
        visit(
            &canonical(w),
            &mut deps,
            &mut seen,
            &mut order,
            &mut missing,
        );
    }
    (order, missing)
}

/// The modules of one unpacked kernel: `lib/modules/<version>/` under the unpack root.
pub struct ModuleTree {
    /// `lib/modules/<version>`.
    pub dir: PathBuf,
    /// The kernel release, e.g. `6.1.0-57-amd64`.
    pub version: String,
    /// Canonical module name -> path relative to [`ModuleTree::dir`].
    pub files: BTreeMap<String, PathBuf>,
    /// Names built into the kernel (`modules.builtin`): nothing to load.
    pub builtin: BTreeSet<String>,
}

/// One module ready for the ramdisk: where it goes (relative to `lib/modules/<version>`) and its bytes.
pub struct Module {
    /// Canonical name.
    pub name: String,
    /// Path in the ramdisk under `lib/modules/<version>/`, always ending in `.ko`.
    pub rel: String,
    /// The uncompressed module.
    pub data: Vec<u8>,
}

impl ModuleTree {
    /// Indexes the kernel unpacked at `root` (the one version under `root/lib/modules` with a
    /// `kernel/` directory).
    pub fn open(root: &Path) -> Result<ModuleTree> {
        let base = root.join("lib/modules");
        let mut versions = Vec::new();
        for e in std::fs::read_dir(&base).with_context(|| {
            format!(
                "reading {} (is this an unpacked linux-image package?)",
                base.display()
            )
        })? {
            let e = e?;
            if e.path().join("kernel").is_dir() {
                versions.push(e.file_name().to_string_lossy().into_owned());
            }
        }
        versions.sort();
        let Some(version) = versions.pop() else {
            bail!(
                "no lib/modules/<version>/kernel in {}: the package holds no modules",
                base.display()
            );
        };
        let dir = base.join(&version);
        let mut files = BTreeMap::new();
        let mut stack = vec![dir.join("kernel")];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).with_context(|| format!("reading {}", d.display()))? {
                let e = e?;
                let p = e.path();
                if e.file_type()?.is_dir() {
                    stack.push(p);
                } else if let Some(name) = module_name(&e.file_name().to_string_lossy()) {
                    if let Ok(rel) = p.strip_prefix(&dir) {
                        files.insert(name, rel.to_path_buf());
                    }
                }
            }
        }
        let builtin = std::fs::read_to_string(dir.join("modules.builtin"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.rsplit('/').next().and_then(module_name))
            .collect();
        Ok(ModuleTree {
            dir,
            version,
            files,
            builtin,
        })
    }

    /// The bytes of module `name`, decompressed.
    fn read(&self, name: &str) -> Result<Option<Vec<u8>>> {
        let Some(rel) = self.files.get(name) else {
            return Ok(None);
        };
        let path = self.dir.join(rel);
        let raw = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        let tool = match path.extension().and_then(|e| e.to_str()) {
            Some("xz") => "xz",
            Some("zst") => "zstd",
            Some("gz") => "gzip",
            _ => return Ok(Some(raw)),
        };
        let out = std::process::Command::new(tool)
            .args(["-d", "-c"])
            .arg(&path)
            .output()
            .with_context(|| {
                format!(
                    "running {tool} to decompress {}: install it (apt-get install xz-utils zstd gzip)",
                    path.display()
                )
            })?;
        if !out.status.success() {
            bail!(
                "{tool} -d {} failed: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(Some(out.stdout))
    }

    /// The wanted modules that exist, with their dependencies, in load order; plus the wanted names that
    /// are neither a module file nor built in (skipped: not every kernel has every driver).
    pub fn resolve(&self, wanted: &[&str]) -> Result<(Vec<Module>, Vec<String>)> {
        let mut data: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        let mut err = None;
        let (order, missing) = load_order(wanted, |m| {
            if self.builtin.contains(m) {
                return Some(Vec::new()); // nothing to load, counts as present
            }
            match self.read(m) {
                Ok(Some(bytes)) => {
                    let d = depends(&bytes);
                    data.insert(m.to_string(), bytes);
                    Some(d)
                }
                Ok(None) => None,
                Err(e) => {
                    err.get_or_insert(e);
                    None
                }
            }
        });
        if let Some(e) = err {
            return Err(e);
        }
        let mut modules = Vec::new();
        for name in order {
            let (Some(bytes), Some(rel)) = (data.remove(&name), self.files.get(&name)) else {
                continue; // built in
            };
            let rel = rel.to_string_lossy();
            let rel = match rel.find(".ko") {
                Some(i) => format!("{}.ko", &rel[..i]),
                None => rel.into_owned(),
            };
            modules.push(Module {
                name,
                rel,
                data: bytes,
            });
        }
        Ok((modules, missing))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A minimal ELF64 LE with a section-name table and a `.modinfo` section.
    fn fake_module(modinfo: &[u8]) -> Vec<u8> {
        let shstr = b"\0.shstrtab\0.modinfo\0";
        let mut elf = vec![0u8; 0x40];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[4] = 2;
        elf[5] = 1;
        let shstr_off = elf.len();
        elf.extend_from_slice(shstr);
        let info_off = elf.len();
        elf.extend_from_slice(modinfo);
        while !elf.len().is_multiple_of(8) {
            elf.push(0);
        }
        let shoff = elf.len();
        // section 0: null; 1: .shstrtab (name at 1); 2: .modinfo (name at 11)
        for (name, off, size) in [
            (0u32, 0usize, 0usize),
            (1, shstr_off, shstr.len()),
            (11, info_off, modinfo.len()),
        ] {
            let mut sh = vec![0u8; 0x40];
            sh[..4].copy_from_slice(&name.to_le_bytes());
            sh[0x18..0x20].copy_from_slice(&(off as u64).to_le_bytes());
            sh[0x20..0x28].copy_from_slice(&(size as u64).to_le_bytes());
            elf.extend_from_slice(&sh);
        }
        elf[0x28..0x30].copy_from_slice(&(shoff as u64).to_le_bytes());
        elf[0x3a..0x3c].copy_from_slice(&0x40u16.to_le_bytes());
        elf[0x3c..0x3e].copy_from_slice(&3u16.to_le_bytes());
        elf[0x3e..0x40].copy_from_slice(&1u16.to_le_bytes());
        elf
    }

    #[test]
    fn reads_depends_from_modinfo() {
        let m = fake_module(b"license=GPL\0depends=virtio_ring,virtio-pci-modern-dev\0name=x\0");
        assert_eq!(depends(&m), ["virtio_ring", "virtio_pci_modern_dev"]);
        assert!(depends(&fake_module(b"depends=\0")).is_empty());
        assert!(depends(b"not an elf").is_empty());
        // Truncations never panic.
        for cut in 0..m.len() {
            let _ = depends(&m[..cut]);
        }
    }

    #[test]
    fn orders_dependencies_first_and_reports_missing() {
        let graph: BTreeMap<&str, Vec<&str>> = [
            ("virtio_blk", vec!["virtio", "virtio_ring"]),
            (
                "virtio_pci",
                vec!["virtio_pci_modern_dev", "virtio", "virtio_ring"],
            ),
            ("virtio_ring", vec!["virtio"]),
            ("virtio", vec![]),
            ("virtio_pci_modern_dev", vec![]),
        ]
        .into_iter()
        .collect();
        let (order, missing) = load_order(&["virtio_pci", "virtio-blk", "nosuch"], |m| {
            graph
                .get(m)
                .map(|d| d.iter().map(|s| s.to_string()).collect())
        });
        assert_eq!(
            order,
            [
                "virtio_pci_modern_dev",
                "virtio",
                "virtio_ring",
                "virtio_pci",
                "virtio_blk"
            ]
        );
        assert_eq!(missing, ["nosuch"]);
    }

    #[test]
    fn tree_resolves_compressed_modules_and_skips_builtin_and_absent() {
        if std::process::Command::new("xz")
            .arg("--version")
            .output()
            .is_err()
        {
            eprintln!("skipped: xz not installed (apt-get install xz-utils)");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let kdir = dir.path().join("lib/modules/6.99-test");
        std::fs::create_dir_all(kdir.join("kernel/drivers/x")).unwrap();
        let a = fake_module(b"depends=b,c\0");
        let b = fake_module(b"depends=\0");
        std::fs::write(kdir.join("kernel/drivers/x/a.ko"), &a).unwrap();
        std::fs::write(kdir.join("kernel/drivers/x/b.ko"), &b).unwrap();
        let st = std::process::Command::new("xz")
            .arg(kdir.join("kernel/drivers/x/a.ko"))
            .status()
            .unwrap();
        assert!(st.success());
        std::fs::write(kdir.join("modules.builtin"), "kernel/lib/c.ko\n").unwrap();
        let tree = ModuleTree::open(dir.path()).unwrap();
        assert_eq!(tree.version, "6.99-test");
        let (mods, missing) = tree.resolve(&["a", "zz"]).unwrap();
        let got: Vec<(&str, &str)> = mods
            .iter()
            .map(|m| (m.name.as_str(), m.rel.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("b", "kernel/drivers/x/b.ko"),
                ("a", "kernel/drivers/x/a.ko")
            ]
        );
        assert_eq!(mods[1].data, a, "decompressed");
        assert_eq!(
            missing,
            ["zz"],
            "c is built in: nothing to load, not missing"
        );
    }

    #[test]
    fn module_names() {
        assert_eq!(module_name("nls_iso8859-1.ko.xz").unwrap(), "nls_iso8859_1");
        assert_eq!(module_name("e1000e.ko").unwrap(), "e1000e");
        assert!(module_name("modules.dep").is_none());
    }
}
