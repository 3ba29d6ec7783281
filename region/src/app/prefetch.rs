//! What each rack should hold in its image cache (the `CacheWanted` session message), decided from the
//! replicated state alone: every bootloader image's files (served over TFTP by name, to any machine), the
//! ramdisk ([`ramdisk_for`]) of each architecture among the machines of the rack's zone that are New or
//! in a status that network-boots, and the disk image ([`disk_image_name`]) of each machine of its zone
//! that is deploying. A rack fetches these in the background, so a boot storm finds them cached.
//!
//! `app::rack_session` keeps one [`PrefetchFeed`] per session and sends the list after the session is
//! recorded and again whenever it changes (looked at on the session's poll tick, recomputed at most every
//! [`PREFETCH_MIN_INTERVAL`]).

use crate::state::State;
use ingot_common::image::{
    arch_family, disk_image_name, ramdisk_for, BlobId, ImageFile, ImageKind,
};
use ingot_common::MachineStatus;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::{Duration, Instant};

/// Most files one `CacheWanted` lists (the rack reads no more): bootloaders first, then ramdisks, then
/// disk images.
pub const MAX_PREFETCH_FILES: usize = 4096;

/// The list is recomputed at most this often (it walks the zone's booting machines; a prefetch a
/// second or two later costs nothing).
pub const PREFETCH_MIN_INTERVAL: Duration = Duration::from_secs(2);

/// One file a rack should hold (a `BlobFile` of `CacheWanted`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrefetchFile {
    /// The image it belongs to.
    pub image: String,
    /// The image's kind.
    pub kind: ImageKind,
    /// The image's arch.
    pub arch: String,
    /// The file: name, blob, size.
    pub file: ImageFile,
}

/// The files rack `rack` should hold now (empty for an unknown rack): bootloaders, then ramdisks, then
/// disk images, each group by image and file name; every blob once; at most [`MAX_PREFETCH_FILES`].
pub fn wanted_files(st: &State, rack: &str) -> Vec<PrefetchFile> {
    let Some(zone) = st.data.racks.get(rack).map(|r| r.zone.as_str()) else {
        return Vec::new();
    };
    let mut families: BTreeSet<&str> = BTreeSet::new();
    let mut disks: BTreeSet<String> = BTreeSet::new();
    // The statuses that boot the ramdisk are the ones whose boot purpose needs it: one rule
    // (`boot_intent::purpose_for`) for what a machine boots and what its rack holds ready.
    let netboot = MachineStatus::ALL
        .into_iter()
        .filter(|s| super::boot_intent::purpose_for(*s).needs_ramdisk());
    for status in netboot {
        let Some(ids) = st.by_zone_status.get(&(zone.to_string(), status)) else {
            continue;
        };
        for m in ids.iter().filter_map(|id| st.data.machines.get(id)) {
            families.insert(arch_family(&m.arch));
            if status == MachineStatus::Deploying {
                if let Some(d) = &m.deploy {
                    disks.insert(disk_image_name(&d.osystem, &d.distro_series));
                }
            }
        }
    }
    let images = &st.data.images;
    let bootloaders = images.values().filter(|i| i.kind == ImageKind::Bootloader);
    let ramdisks: BTreeMap<&str, _> = families
        .iter()
        .filter_map(|f| ramdisk_for(images.values(), f).map(|i| (i.name.as_str(), i)))
        .collect();
    let disk_images = disks
        .iter()
        .filter_map(|n| images.get(n))
        .filter(|i| i.kind == ImageKind::Disk);
    let mut seen: HashSet<BlobId> = HashSet::new();
    bootloaders
        .chain(ramdisks.into_values())
        .chain(disk_images)
        .flat_map(|i| {
            i.files.iter().map(move |f| PrefetchFile {
                image: i.name.clone(),
                kind: i.kind,
                arch: i.arch.clone(),
                file: f.clone(),
            })
        })
        .filter(|f| seen.insert(f.file.blob))
        .take(MAX_PREFETCH_FILES)
        .collect()
}

/// One session's prefetch list: what was sent last, and when it was computed.
#[derive(Debug, Default)]
pub struct PrefetchFeed {
    /// The list last sent (`None`: nothing sent yet).
    sent: Option<Vec<PrefetchFile>>,
    /// When the list was last computed, and the state revision it was computed at.
    computed: Option<(Instant, u64)>,
}

impl PrefetchFeed {
    /// The list to send `rack` now, if it differs from the one last sent: computed at once the first
    /// time, then when the state moved on, at most every [`PREFETCH_MIN_INTERVAL`].
    pub fn changed(&mut self, st: &State, rack: &str, now: Instant) -> Option<Vec<PrefetchFile>> {
        let revision = st.data.revision;
        if let Some((at, rev)) = self.computed {
            if rev == revision || now.saturating_duration_since(at) < PREFETCH_MIN_INTERVAL {
                return None;
            }
        }
        self.computed = Some((now, revision));
        let files = wanted_files(st, rack);
        if self.sent.as_ref() == Some(&files) {
            return None;
        }
        self.sent = Some(files.clone());
        Some(files)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::zones::tests::machine;
    use ingot_common::image::Image;
    use ingot_common::model::{DeploySpec, Rack};

    fn file(name: &str, seed: u8) -> ImageFile {
        ImageFile {
            name: name.into(),
            blob: BlobId([seed; 32]),
            size: u64::from(seed) * 1000,
        }
    }

    fn image(
        name: &str,
        kind: ImageKind,
        arch: &str,
        created_ms: u64,
        files: Vec<ImageFile>,
    ) -> Image {
        Image {
            name: name.into(),
            kind,
            arch: arch.into(),
            files,
            created_by: "admin".into(),
            created_ms,
        }
    }

    fn state() -> State {
        let mut st = State::default();
        for (rack, zone) in [("r1", "z1"), ("r2", "z2")] {
            st.data.racks.insert(
                rack.into(),
                Rack {
                    name: rack.into(),
                    zone: zone.into(),
                    registered_ms: 1,
                    revoked: false,
                    session: None,
                },
            );
        }
        for i in [
            image(
                "ipxe",
                ImageKind::Bootloader,
                "amd64",
                1,
                vec![file("undionly.kpxe", 1), file("snponly.efi", 2)],
            ),
            image(
                "ramdisk-old",
                ImageKind::Ramdisk,
                "amd64",
                1,
                vec![file("kernel", 3), file("initrd", 4)],
            ),
            image(
                "ramdisk",
                ImageKind::Ramdisk,
                "amd64",
                2,
                vec![file("kernel", 5), file("initrd", 6)],
            ),
            image(
                "ramdisk-arm",
                ImageKind::Ramdisk,
                "arm64",
                1,
                vec![file("kernel", 7), file("initrd", 8)],
            ),
            image(
                "debian/bookworm",
                ImageKind::Disk,
                "amd64",
                1,
                vec![file("disk", 9)],
            ),
            // Shares its kernel with `ramdisk`: listed once.
            image(
                "ubuntu/noble",
                ImageKind::Disk,
                "amd64",
                1,
                vec![file("disk", 10), file("kernel", 5)],
            ),
        ] {
            st.data.images.insert(i.name.clone(), i);
        }
        st
    }

    fn add(
        st: &mut State,
        id: &str,
        zone: &str,
        arch: &str,
        status: MachineStatus,
        deploy: Option<(&str, &str)>,
    ) {
        let mut m = machine(id, zone, status);
        m.arch = arch.into();
        m.deploy = deploy.map(|(o, d)| DeploySpec {
            osystem: o.into(),
            distro_series: d.into(),
            user_data: String::new(),
            ..Default::default()
        });
        st.data.machines.insert(id.into(), m.clone());
        st.index(&m);
    }

    fn names(files: &[PrefetchFile]) -> Vec<String> {
        files
            .iter()
            .map(|f| format!("{}:{}", f.image, f.file.name))
            .collect()
    }

    #[test]
    fn a_rack_holds_bootloaders_the_zones_ramdisks_and_deploying_disk_images() {
        let mut st = state();
        // Nobody boots in z1 yet: bootloaders only.
        assert_eq!(
            names(&wanted_files(&st, "r1")),
            ["ipxe:undionly.kpxe", "ipxe:snponly.efi"]
        );
        assert!(wanted_files(&st, "nobody").is_empty());
        // Ready, Deployed and Allocated machines boot nothing from the network.
        add(
            &mut st,
            "a",
            "z1",
            "arm64/generic",
            MachineStatus::Ready,
            None,
        );
        add(
            &mut st,
            "b",
            "z1",
            "amd64",
            MachineStatus::Deployed,
            Some(("debian", "bookworm")),
        );
        assert_eq!(wanted_files(&st, "r1").len(), 2);
        // A New amd64 machine: the newest amd64 ramdisk.
        add(
            &mut st,
            "c",
            "z1",
            "amd64/generic",
            MachineStatus::New,
            None,
        );
        // A deploying one: its disk image too (the other zone's machines do not count).
        add(
            &mut st,
            "d",
            "z1",
            "amd64/hwe",
            MachineStatus::Deploying,
            Some(("ubuntu", "noble")),
        );
        add(
            &mut st,
            "e",
            "z2",
            "arm64",
            MachineStatus::Deploying,
            Some(("debian", "bookworm")),
        );
        assert_eq!(
            names(&wanted_files(&st, "r1")),
            [
                "ipxe:undionly.kpxe",
                "ipxe:snponly.efi",
                "ramdisk:kernel",
                "ramdisk:initrd",
                "ubuntu/noble:disk"
            ]
        );
        assert_eq!(
            names(&wanted_files(&st, "r2")),
            [
                "ipxe:undionly.kpxe",
                "ipxe:snponly.efi",
                "ramdisk-arm:kernel",
                "ramdisk-arm:initrd",
                "debian/bookworm:disk"
            ]
        );
        // Every network-booting status counts (the list, checked against boot_intent's rule).
        let netboot = [
            MachineStatus::New,
            MachineStatus::Commissioning,
            MachineStatus::Testing,
            MachineStatus::Deploying,
            MachineStatus::DiskErasing,
            MachineStatus::EnteringRescueMode,
            MachineStatus::RescueMode,
        ];
        for (i, s) in netboot.into_iter().enumerate() {
            let mut st = state();
            add(&mut st, &format!("m{i}"), "z1", "arm64", s, None);
            assert!(
                names(&wanted_files(&st, "r1")).contains(&"ramdisk-arm:kernel".to_string()),
                "{s:?}"
            );
        }
        // A deployment whose image does not exist names nothing more.
        add(
            &mut st,
            "f",
            "z1",
            "amd64",
            MachineStatus::Deploying,
            Some(("centos", "9")),
        );
        assert_eq!(wanted_files(&st, "r1").len(), 5);
    }

    #[test]
    fn the_feed_sends_the_list_once_and_again_when_it_changes() {
        let mut st = state();
        let t0 = Instant::now();
        let mut feed = PrefetchFeed::default();
        assert_eq!(feed.changed(&st, "r1", t0).map(|f| f.len()), Some(2));
        // Same revision: nothing recomputed.
        assert_eq!(feed.changed(&st, "r1", t0 + Duration::from_secs(5)), None);
        add(
            &mut st,
            "c",
            "z1",
            "amd64",
            MachineStatus::Commissioning,
            None,
        );
        st.data.revision += 1;
        // Changed, but within the interval: later.
        assert_eq!(feed.changed(&st, "r1", t0 + Duration::from_secs(1)), None);
        let t1 = t0 + PREFETCH_MIN_INTERVAL;
        assert_eq!(feed.changed(&st, "r1", t1).map(|f| f.len()), Some(4));
        // The revision moved but the list is the same: nothing sent.
        st.data.revision += 1;
        assert_eq!(feed.changed(&st, "r1", t1 + PREFETCH_MIN_INTERVAL), None);
    }
}
