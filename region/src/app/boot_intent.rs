//! What a network-booting machine should boot now: the answer to a rack's `BootIntentRequest`, decided
//! from the replicated state alone (pure over [`State`], no I/O), so every region answers the same.
//!
//! The purpose follows the machine's status (an unknown MAC, or a New machine, enlists; Commissioning,
//! Testing, Disk erasing, Deploying and rescue boot the ramdisk for that purpose; Deployed boots its
//! local disk; anything else powers off). The ramdisk is [`ramdisk_for`] the machine's arch — the one
//! rule the prefetch uses too — and a deployment adds the `disk` file of the image named
//! [`disk_image_name`]`(osystem, distro_series)`. Whatever is missing becomes `problem`, naming what to
//! upload: the rack's script shows it on the console and asks again later.

use crate::state::State;
use ingot_common::image::{
    disk_image_name, ramdisk_for, BootIntent, BootPurpose, Image, ImageFile, ImageKind, FILE_DISK,
    FILE_INITRD, FILE_KERNEL,
};
use ingot_common::{Mac, Machine, MachineStatus};

/// Whom a rack asks about: the MAC in a script URL, or a machine's system id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IntentKey {
    /// A boot MAC (known or not).
    Mac(Mac),
    /// A machine by system id.
    SystemId(String),
}

/// The image a file of an answer comes from: what the rack's cache needs to fetch and keep it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntentImage {
    /// The image's name.
    pub name: String,
    /// Its kind.
    pub kind: ImageKind,
    /// Its arch.
    pub arch: String,
}

impl IntentImage {
    fn of(i: &Image) -> IntentImage {
        IntentImage {
            name: i.name.clone(),
            kind: i.kind,
            arch: i.arch.clone(),
        }
    }
}

/// The region's answer: the intent, and the images its files belong to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootIntentAnswer {
    /// What to boot (no secret in it: it becomes a script anyone on the wire can fetch).
    pub intent: BootIntent,
    /// The ramdisk image of `intent.kernel`/`intent.initrd`.
    pub ramdisk: Option<IntentImage>,
    /// The disk image of `intent.disk`.
    pub disk_image: Option<IntentImage>,
}

/// Why a machine in `status` network-boots (see the module docs).
pub fn purpose_for(status: MachineStatus) -> BootPurpose {
    use MachineStatus as S;
    match status {
        S::New => BootPurpose::Enlist,
        S::Commissioning => BootPurpose::Commission,
        S::Testing => BootPurpose::Test,
        S::DiskErasing => BootPurpose::Erase,
        S::Deploying => BootPurpose::Deploy,
        S::Deployed => BootPurpose::LocalDisk,
        S::EnteringRescueMode | S::RescueMode => BootPurpose::Rescue,
        _ => BootPurpose::PowerOff,
    }
}

/// The answer for `key` in `st`.
pub fn decide(st: &State, key: &IntentKey) -> BootIntentAnswer {
    let machine = match key {
        IntentKey::Mac(mac) => st.machine_by_mac(mac),
        IntentKey::SystemId(id) => st.machine(id),
    };
    let Some(m) = machine else {
        return match key {
            // An unknown MAC enlists (the ramdisk reports it; DHCP enlisted it already when it PXE-booted).
            IntentKey::Mac(_) => with_ramdisk(st, None, BootPurpose::Enlist, ""),
            IntentKey::SystemId(id) => BootIntentAnswer {
                intent: BootIntent {
                    system_id: None,
                    purpose: BootPurpose::PowerOff,
                    kernel: None,
                    initrd: None,
                    disk: None,
                    problem: format!(
                        "no machine has system id {}: powering off",
                        id.chars().take(64).collect::<String>()
                    ),
                },
                ramdisk: None,
                disk_image: None,
            },
        };
    };
    let purpose = purpose_for(m.status);
    match purpose {
        BootPurpose::LocalDisk | BootPurpose::PowerOff => BootIntentAnswer {
            intent: BootIntent {
                system_id: Some(m.system_id.clone()),
                purpose,
                kernel: None,
                initrd: None,
                disk: None,
                problem: if purpose == BootPurpose::PowerOff {
                    format!(
                        "machine {} is {}: nothing to network-boot, powering off",
                        m.system_id,
                        m.status.as_str()
                    )
                } else {
                    String::new()
                },
            },
            ramdisk: None,
            disk_image: None,
        },
        _ => {
            let mut a = with_ramdisk(st, Some(m), purpose, &m.arch);
            if purpose == BootPurpose::Deploy {
                add_disk(st, m, &mut a);
            }
            a
        }
    }
}

/// A ramdisk purpose's answer: the ramdisk for `arch`, or the problem naming what to upload.
fn with_ramdisk(
    st: &State,
    m: Option<&Machine>,
    purpose: BootPurpose,
    arch: &str,
) -> BootIntentAnswer {
    let mut a = BootIntentAnswer {
        intent: BootIntent {
            system_id: m.map(|m| m.system_id.clone()),
            purpose,
            kernel: None,
            initrd: None,
            disk: None,
            problem: String::new(),
        },
        ramdisk: None,
        disk_image: None,
    };
    let family = ingot_common::image::arch_family(arch);
    match ramdisk_for(st.data.images.values(), arch) {
        Some(img) => match (img.file(FILE_KERNEL), img.file(FILE_INITRD)) {
            (Some(k), Some(i)) => {
                a.intent.kernel = Some(k.clone());
                a.intent.initrd = Some(i.clone());
                a.ramdisk = Some(IntentImage::of(img));
            }
            _ => {
                a.intent.problem = format!(
                    "ramdisk image {} lacks a kernel or initrd (upload it again: ingot images upload)",
                    img.name
                );
            }
        },
        None => {
            a.intent.problem = format!(
                "no ramdisk image for arch {family} (upload one: ingot images upload NAME --kind ramdisk --arch {family})"
            );
        }
    }
    a
}

/// Adds the disk image a deployment of `m` writes, or the problem naming it.
fn add_disk(st: &State, m: &Machine, a: &mut BootIntentAnswer) {
    let Some(spec) = &m.deploy else {
        append_problem(
            &mut a.intent.problem,
            format!(
                "machine {} is deploying without a deploy spec (deploy it again)",
                m.system_id
            ),
        );
        return;
    };
    let name = disk_image_name(&spec.osystem, &spec.distro_series);
    let disk: Option<(&Image, &ImageFile)> = st
        .data
        .images
        .get(&name)
        .and_then(|img| img.file(FILE_DISK).map(|f| (img, f)));
    match disk {
        Some((img, f)) => {
            a.intent.disk = Some(f.clone());
            a.disk_image = Some(IntentImage::of(img));
        }
        None => append_problem(
            &mut a.intent.problem,
            format!(
                "no disk image {name} to deploy (upload it: ingot images upload {name} --kind disk)"
            ),
        ),
    }
}

fn append_problem(problem: &mut String, more: String) {
    if !problem.is_empty() {
        problem.push_str("; ");
    }
    problem.push_str(&more);
}

/// Boot intents one session may ask per second (the burst allowance is the same); more are answered
/// with an error and the script asks again. A rack of a few hundred machines booting at once asks a
/// few hundred times over several seconds.
pub const INTENTS_PER_SECOND: u32 = 200;
/// `BootEvents` messages one session may have recorded per second (the rack sends about one; each holds
/// at most [`crate::command::op::MAX_BOOT_EVENTS_PER_OP`] events); more are dropped.
pub const EVENT_MESSAGES_PER_SECOND: u32 = 2;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::boot::RateLimit;
    use crate::app::zones::tests::machine;
    use ingot_common::image::BlobId;
    use ingot_common::model::DeploySpec;

    fn mac(n: u8) -> Mac {
        Mac([0x52, 0x54, 0, 0, 0, n])
    }

    fn file(name: &str, b: u8) -> ImageFile {
        ImageFile {
            name: name.into(),
            blob: BlobId([b; 32]),
            size: 100,
        }
    }

    fn image(name: &str, kind: ImageKind, arch: &str, files: Vec<ImageFile>, at: u64) -> Image {
        Image {
            name: name.into(),
            kind,
            arch: arch.into(),
            files,
            created_by: "admin".into(),
            created_ms: at,
        }
    }

    /// A state with machine `m<n>` (MAC 52:54:00:00:00:0n) in each status given.
    fn state(statuses: &[MachineStatus]) -> State {
        let mut st = State::default();
        for (n, s) in statuses.iter().enumerate() {
            let n = n as u8 + 1;
            let mut m = machine(&format!("m{n}"), "default", *s);
            m.macs = vec![mac(n)];
            m.deploy = Some(DeploySpec {
                osystem: "debian".into(),
                distro_series: "bookworm".into(),
                user_data: String::new(),
                ..Default::default()
            });
            st.put_machine(m);
        }
        st
    }

    fn with_images(st: &mut State) {
        for img in [
            image(
                "old-ramdisk",
                ImageKind::Ramdisk,
                "amd64",
                vec![file("kernel", 1), file("initrd", 2)],
                1,
            ),
            image(
                "ingot-ramdisk",
                ImageKind::Ramdisk,
                "amd64/generic",
                vec![file("kernel", 3), file("initrd", 4)],
                2,
            ),
            image(
                "arm-ramdisk",
                ImageKind::Ramdisk,
                "arm64",
                vec![file("kernel", 5), file("initrd", 6)],
                3,
            ),
            image(
                "debian/bookworm",
                ImageKind::Disk,
                "amd64",
                vec![file("disk", 7)],
                4,
            ),
        ] {
            st.data.images.insert(img.name.clone(), img);
        }
    }

    #[test]
    fn rate_limits_refill() {
        let t0 = std::time::Instant::now();
        let mut r = RateLimit::new(2, t0);
        assert!(r.take(t0) && r.take(t0));
        assert!(!r.take(t0));
        assert!(r.take(t0 + std::time::Duration::from_millis(600)));
        assert!(!r.take(t0 + std::time::Duration::from_millis(600)));
    }

    #[test]
    fn the_purpose_follows_the_status() {
        use MachineStatus as S;
        let expect = [
            (S::New, BootPurpose::Enlist),
            (S::Commissioning, BootPurpose::Commission),
            (S::Testing, BootPurpose::Test),
            (S::DiskErasing, BootPurpose::Erase),
            (S::Deploying, BootPurpose::Deploy),
            (S::Deployed, BootPurpose::LocalDisk),
            (S::EnteringRescueMode, BootPurpose::Rescue),
            (S::RescueMode, BootPurpose::Rescue),
            (S::Ready, BootPurpose::PowerOff),
            (S::Allocated, BootPurpose::PowerOff),
            (S::Releasing, BootPurpose::PowerOff),
            (S::Broken, BootPurpose::PowerOff),
            (S::FailedCommissioning, BootPurpose::PowerOff),
        ];
        let statuses: Vec<S> = expect.iter().map(|(s, _)| *s).collect();
        let mut st = state(&statuses);
        with_images(&mut st);
        for (n, (status, purpose)) in expect.iter().enumerate() {
            let a = decide(&st, &IntentKey::Mac(mac(n as u8 + 1)));
            assert_eq!(a.intent.purpose, *purpose, "{status:?}");
            assert_eq!(
                a.intent.system_id.as_deref(),
                Some(format!("m{}", n + 1).as_str())
            );
            assert_eq!(
                a.intent.kernel.is_some(),
                purpose.needs_ramdisk(),
                "{status:?}"
            );
            assert_eq!(
                a.intent.disk.is_some(),
                *purpose == BootPurpose::Deploy,
                "{status:?}"
            );
            if *purpose == BootPurpose::PowerOff {
                assert!(
                    a.intent.problem.contains(status.as_str()),
                    "{}",
                    a.intent.problem
                );
            } else {
                assert_eq!(a.intent.problem, "", "{status:?}");
            }
        }
        // The same by system id.
        let a = decide(&st, &IntentKey::SystemId("m2".into()));
        assert_eq!(a.intent.purpose, BootPurpose::Commission);
    }

    #[test]
    fn ramdisk_by_arch_newest_first_and_the_deploy_disk() {
        let mut st = state(&[MachineStatus::Deploying, MachineStatus::Commissioning]);
        with_images(&mut st);
        let a = decide(&st, &IntentKey::Mac(mac(1)));
        assert_eq!(
            a.intent.kernel,
            Some(file("kernel", 3)),
            "the newest amd64 ramdisk"
        );
        assert_eq!(a.intent.initrd, Some(file("initrd", 4)));
        assert_eq!(a.intent.disk, Some(file("disk", 7)));
        assert_eq!(
            a.ramdisk.as_ref().map(|i| i.name.as_str()),
            Some("ingot-ramdisk")
        );
        assert_eq!(
            a.disk_image,
            Some(IntentImage {
                name: "debian/bookworm".into(),
                kind: ImageKind::Disk,
                arch: "amd64".into()
            })
        );
        // An arm64 machine gets the arm64 ramdisk.
        let mut m = st.machine("m2").expect("m2").clone();
        m.arch = "arm64/generic".into();
        st.put_machine(m);
        let a = decide(&st, &IntentKey::Mac(mac(2)));
        assert_eq!(a.intent.kernel, Some(file("kernel", 5)));
    }

    #[test]
    fn unknown_macs_enlist_and_missing_images_are_named() {
        let mut st = state(&[MachineStatus::Deploying]);
        let a = decide(&st, &IntentKey::Mac(mac(9)));
        assert_eq!(a.intent.purpose, BootPurpose::Enlist);
        assert_eq!(a.intent.system_id, None);
        assert!(a.intent.kernel.is_none());
        assert!(
            a.intent.problem.contains("no ramdisk image for arch amd64")
                && a.intent.problem.contains("ingot images upload"),
            "{}",
            a.intent.problem
        );
        // Deploying without the disk image: both missing things are named.
        let a = decide(&st, &IntentKey::Mac(mac(1)));
        assert!(
            a.intent.problem.contains("no ramdisk image"),
            "{}",
            a.intent.problem
        );
        assert!(
            a.intent.problem.contains("no disk image debian/bookworm"),
            "{}",
            a.intent.problem
        );
        with_images(&mut st);
        st.data.images.remove("debian/bookworm");
        let a = decide(&st, &IntentKey::Mac(mac(1)));
        assert!(a.intent.kernel.is_some());
        assert!(a.intent.disk.is_none());
        assert!(
            a.intent
                .problem
                .starts_with("no disk image debian/bookworm"),
            "{}",
            a.intent.problem
        );
        // An unknown system id powers off, saying why.
        let a = decide(&st, &IntentKey::SystemId("zzz".into()));
        assert_eq!(a.intent.purpose, BootPurpose::PowerOff);
        assert!(a.intent.problem.contains("system id zzz"));
    }
}
