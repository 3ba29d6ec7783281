//! Boot images and which regions hold their blobs, in the apply step.
//!
//! An image's metadata is recorded by `PutImage` together with its uploading region as the first holder
//! of every blob; other regions copy the blobs and report them with `RecordBlobs`. `Data::blob_holders`
//! only ever names blobs some image references, and only regions that are members: it is what `held_by`
//! shows, where regions and racks fetch from, and what an upload waits on (a majority of voters holding
//! every blob). Deleting an image drops its blobs' entries once no other image references them; every
//! region then removes those files (its blob sync task).

use super::ctx::ApplyCtx;
use super::events::EventBuilder;
use crate::command::{op, Reply, Response};
use crate::state::{Data, State};
use ingot_common::image::{disk_image_name, BlobId, MAX_IMAGES};
use ingot_common::model::EventLevel;
use ingot_common::{DomainError, MachineStatus};
use std::collections::BTreeSet;

/// Every blob some image references.
pub(crate) fn referenced(data: &Data) -> BTreeSet<BlobId> {
    data.images
        .values()
        .flat_map(|i| i.files.iter().map(|f| f.blob))
        .collect()
}

/// The machines in Deploying whose deployment writes image `name` (`disk_image_name(osystem,
/// distro_series)` equals it), by system id: they would fail mid-deploy without it.
pub(crate) fn used_by(state: &State, name: &str) -> Vec<String> {
    let Some(ids) = state.by_status.get(&MachineStatus::Deploying) else {
        return Vec::new();
    };
    ids.iter()
        .filter(|id| {
            state
                .data
                .machines
                .get(*id)
                .and_then(|m| m.deploy.as_ref())
                .is_some_and(|d| disk_image_name(&d.osystem, &d.distro_series) == name)
        })
        .cloned()
        .collect()
}

/// Drops holder entries of blobs no image references any more.
fn drop_unreferenced(data: &mut Data) {
    let keep = referenced(data);
    data.blob_holders.retain(|b, _| keep.contains(b));
}

/// Records an uploaded image and its uploading region as holder of every blob.
pub(super) fn put(ctx: &ApplyCtx, state: &mut State, op: &op::PutImage) -> Response {
    let image = &op.image;
    image.validate()?;
    if state.data.images.contains_key(&image.name) {
        return Err(DomainError::exists(
            "name",
            format!(
                "image '{}' already exists; delete it first or choose another name",
                image.name
            ),
        ));
    }
    if state.data.images.len() >= MAX_IMAGES {
        return Err(DomainError::exhausted(format!(
            "the cluster holds {MAX_IMAGES} images, the most it keeps; delete unused ones first"
        )));
    }
    if !state.data.regions.contains_key(&op.holder) {
        return Err(DomainError::precondition(format!(
            "region {} that received the upload is not a member of the cluster; upload again to a current region",
            op.holder
        )));
    }
    let mut image = image.clone();
    image.created_by = ctx.actor.to_string();
    image.created_ms = ctx.ts_ms;
    for f in &image.files {
        state
            .data
            .blob_holders
            .entry(f.blob)
            .or_default()
            .insert(op.holder);
    }
    EventBuilder::new("image.put")
        .message(format!(
            "{} ({}, {}, {} file(s), {} bytes) uploaded to region {}",
            image.name,
            image.kind,
            image.arch,
            image.files.len(),
            image.size(),
            op.holder
        ))
        .record(ctx, state);
    state.data.images.insert(image.name.clone(), image);
    Ok(Reply::Done)
}

/// Deletes an image unless a Deploying machine uses it.
pub(super) fn delete(ctx: &ApplyCtx, state: &mut State, op: &op::DeleteImage) -> Response {
    let name = &op.name;
    if !state.data.images.contains_key(name) {
        return Err(DomainError::not_found(format!(
            "image '{name}' does not exist"
        )));
    }
    let users = used_by(state, name);
    if !users.is_empty() {
        return Err(DomainError::precondition(format!(
            "image '{name}' is being deployed to machine(s) {}; wait until they are Deployed (or release them) first",
            users.join(", ")
        )));
    }
    state.data.images.remove(name);
    drop_unreferenced(&mut state.data);
    EventBuilder::new("image.delete")
        .message(name.clone())
        .record(ctx, state);
    Ok(Reply::Done)
}

/// Records blobs a region now holds or lost: only blobs some image references, only for member regions.
pub(super) fn record_blobs(ctx: &ApplyCtx, state: &mut State, op: &op::RecordBlobs) -> Response {
    let n = op.held.len().saturating_add(op.lost.len());
    if n > op::MAX_BLOBS_PER_RECORD {
        return Err(DomainError::invalid(
            "held",
            format!(
                "{n} blobs in one record, at most {}",
                op::MAX_BLOBS_PER_RECORD
            ),
        ));
    }
    if !state.data.regions.contains_key(&op.region) {
        return Err(DomainError::precondition(format!(
            "region {} is not a member of the cluster",
            op.region
        )));
    }
    let referenced = referenced(&state.data);
    for b in op.held.iter().filter(|b| referenced.contains(b)) {
        state
            .data
            .blob_holders
            .entry(*b)
            .or_default()
            .insert(op.region);
    }
    let mut lost = Vec::new();
    for b in &op.lost {
        if let Some(h) = state.data.blob_holders.get_mut(b) {
            if h.remove(&op.region) {
                lost.push(b.to_hex());
            }
        }
    }
    if !lost.is_empty() {
        EventBuilder::new("image.blob-lost")
            .level(EventLevel::Warning)
            .message(format!(
                "region {} lost its copy of blob(s) {} (missing or corrupt on disk); it fetches them again",
                op.region,
                lost.join(", ")
            ))
            .record(ctx, state);
    }
    Ok(Reply::Done)
}

#[cfg(test)]
mod tests {
    use crate::apply::apply;
    use crate::apply::test_support::{by_token, init, internal};
    use crate::command::{op, Command, Internal, Op};
    use crate::state::State;
    use ingot_common::image::{BlobId, Image, ImageFile, ImageKind};
    use ingot_common::model::DeploySpec;
    use ingot_common::{ErrorCode, MachineStatus, RegionInfo};
    use rand::{Rng, SeedableRng};

    fn blob(n: u8) -> BlobId {
        BlobId([n; 32])
    }

    fn image(name: &str, kernel: u8, initrd: u8) -> Image {
        Image {
            name: name.into(),
            kind: ImageKind::Ramdisk,
            arch: "amd64".into(),
            files: vec![
                ImageFile {
                    name: "kernel".into(),
                    blob: blob(kernel),
                    size: 10,
                },
                ImageFile {
                    name: "initrd".into(),
                    blob: blob(initrd),
                    size: 20,
                },
            ],
            created_by: String::new(),
            created_ms: 0,
        }
    }

    fn admin(ts: u64, op: Op) -> Command {
        by_token(ts, "admin-init", "admin", op)
    }

    fn region(ts: u64, op: Op) -> Command {
        internal(ts, Internal::Region, "region", op)
    }

    fn put(name: &str, k: u8, i: u8, holder: u64) -> Op {
        Op::PutImage(op::PutImage {
            image: image(name, k, i),
            holder,
        })
    }

    fn record(region: u64, held: Vec<BlobId>, lost: Vec<BlobId>) -> Op {
        Op::RecordBlobs(op::RecordBlobs { region, held, lost })
    }

    /// A cluster of regions 1 (bootstrap) and 2.
    fn cluster() -> (State, u64) {
        let mut s = State::default();
        apply(&mut s, &init(), 1).expect("bootstrap");
        s.data.regions.insert(
            2,
            RegionInfo {
                node_id: 2,
                name: "r2".into(),
                raft_addr: "a2".into(),
                api_addr: "b2".into(),
                joined_ms: 0,
            },
        );
        (s, 1)
    }

    #[test]
    fn put_records_the_image_and_its_holder_and_refuses_duplicates() {
        let (mut s, mut rev) = cluster();
        let mut run = |s: &mut State, c: Command| {
            rev += 1;
            apply(s, &c, rev)
        };
        run(&mut s, admin(2, put("ram", 1, 2, 1))).expect("put");
        let img = &s.data.images["ram"];
        assert_eq!(img.created_by, "admin");
        assert_eq!(s.data.blob_holders[&blob(1)], [1].into_iter().collect());
        assert!(s.data.events.iter().any(|e| e.kind == "image.put"));
        let e = run(&mut s, admin(3, put("ram", 3, 4, 1))).unwrap_err();
        assert_eq!(e.code, ErrorCode::AlreadyExists);
        assert_eq!(e.field.as_deref(), Some("name"), "{e:?}");
        // Invalid metadata is refused in apply too, naming the field.
        let mut bad = image("bad", 5, 6);
        bad.files[1].name = "kernel".into();
        let e = run(
            &mut s,
            admin(
                4,
                Op::PutImage(op::PutImage {
                    image: bad,
                    holder: 1,
                }),
            ),
        )
        .unwrap_err();
        assert_eq!(e.field.as_deref(), Some("files[1].name"), "{e:?}");
        // The holder must be a member.
        let e = run(&mut s, admin(5, put("x", 7, 8, 9))).unwrap_err();
        assert_eq!(e.code, ErrorCode::FailedPrecondition, "{e:?}");
        // Only admins upload.
        let e = run(&mut s, region(6, put("y", 7, 8, 1))).unwrap_err();
        assert_eq!(e.code, ErrorCode::PermissionDenied, "{e:?}");
    }

    #[test]
    fn record_blobs_counts_only_referenced_blobs_of_members() {
        let (mut s, mut rev) = cluster();
        let mut run = |s: &mut State, c: Command| {
            rev += 1;
            apply(s, &c, rev)
        };
        run(&mut s, admin(2, put("ram", 1, 2, 1))).expect("put");
        run(&mut s, region(3, record(2, vec![blob(1), blob(9)], vec![]))).expect("record");
        assert_eq!(s.data.blob_holders[&blob(1)], [1, 2].into_iter().collect());
        assert!(!s.data.blob_holders.contains_key(&blob(9)));
        run(&mut s, region(4, record(1, vec![], vec![blob(1)]))).expect("lost");
        assert_eq!(s.data.blob_holders[&blob(1)], [2].into_iter().collect());
        assert!(s.data.events.iter().any(|e| e.kind == "image.blob-lost"));
        let e = run(&mut s, region(5, record(7, vec![blob(1)], vec![]))).unwrap_err();
        assert_eq!(e.code, ErrorCode::FailedPrecondition, "{e:?}");
        let many = vec![blob(1); op::MAX_BLOBS_PER_RECORD + 1];
        let e = run(&mut s, region(6, record(2, many, vec![]))).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidArgument, "{e:?}");
        // An API token may not record blobs.
        let e = run(&mut s, admin(7, record(2, vec![blob(2)], vec![]))).unwrap_err();
        assert_eq!(e.code, ErrorCode::PermissionDenied, "{e:?}");
    }

    #[test]
    fn delete_is_refused_while_a_deploying_machine_uses_the_image() {
        let (mut s, mut rev) = cluster();
        let mut run = |s: &mut State, c: Command| {
            rev += 1;
            apply(s, &c, rev)
        };
        let disk = Image {
            name: "debian/bookworm".into(),
            kind: ImageKind::Disk,
            arch: "amd64".into(),
            files: vec![ImageFile {
                name: "disk".into(),
                blob: blob(3),
                size: 5,
            }],
            created_by: String::new(),
            created_ms: 0,
        };
        run(
            &mut s,
            admin(
                2,
                Op::PutImage(op::PutImage {
                    image: disk,
                    holder: 1,
                }),
            ),
        )
        .expect("put");
        run(&mut s, admin(3, put("ram", 1, 3, 1))).expect("put shares blob 3");
        run(
            &mut s,
            admin(4, crate::apply::test_support::create_m1(Default::default())),
        )
        .expect("machine");
        let mut m = s.data.machines["m1"].clone();
        m.status = MachineStatus::Deploying;
        m.deploy = Some(DeploySpec {
            osystem: "debian".into(),
            distro_series: "bookworm".into(),
            user_data: String::new(),
            ..Default::default()
        });
        s.put_machine(m);
        let del = |n: &str| Op::DeleteImage(op::DeleteImage { name: n.into() });
        let e = run(&mut s, admin(5, del("debian/bookworm"))).unwrap_err();
        assert_eq!(e.code, ErrorCode::FailedPrecondition, "{e:?}");
        assert!(e.message.contains("m1"), "{}", e.message);
        let e = run(&mut s, admin(6, del("nope"))).unwrap_err();
        assert_eq!(e.code, ErrorCode::NotFound, "{e:?}");
        let mut m = s.data.machines["m1"].clone();
        m.status = MachineStatus::Deployed;
        s.put_machine(m);
        run(&mut s, admin(7, del("debian/bookworm"))).expect("delete");
        // Blob 3 is still referenced by "ram".
        assert!(s.data.blob_holders.contains_key(&blob(3)));
        run(&mut s, admin(8, del("ram"))).expect("delete");
        assert!(s.data.blob_holders.is_empty());
        assert!(s.data.events.iter().any(|e| e.kind == "image.delete"));
    }

    /// Random puts, deletes and records from two regions (and a stranger), and now and then a region
    /// removed: `blob_holders` only ever names blobs some image references, held by member regions.
    #[test]
    fn blob_holders_only_name_referenced_blobs() {
        for seed in 0..20u64 {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let (mut s, mut rev) = cluster();
            for step in 0..300u64 {
                let name = format!("img{}", rng.gen_range(0..5));
                let b = |rng: &mut rand::rngs::StdRng| blob(rng.gen_range(0..8));
                let c = match rng.gen_range(0..60) {
                    0 => admin(
                        step + 2,
                        Op::ForgetRegion(op::ForgetRegion {
                            node_id: rng.gen_range(1..4),
                        }),
                    ),
                    1..15 => {
                        let (k, i) = (rng.gen_range(0..8), rng.gen_range(0..8));
                        admin(step + 2, put(&name, k, i, rng.gen_range(1..4)))
                    }
                    15..30 => admin(step + 2, Op::DeleteImage(op::DeleteImage { name })),
                    _ => {
                        let held = (0..rng.gen_range(0..4)).map(|_| b(&mut rng)).collect();
                        let lost = (0..rng.gen_range(0..2)).map(|_| b(&mut rng)).collect();
                        region(step + 2, record(rng.gen_range(1..4), held, lost))
                    }
                };
                rev += 1;
                let _ = apply(&mut s, &c, rev);
                let referenced = super::referenced(&s.data);
                for (b, holders) in &s.data.blob_holders {
                    assert!(referenced.contains(b), "seed {seed} step {step}: {b:?}");
                    assert!(
                        holders.iter().all(|r| s.data.regions.contains_key(r)),
                        "seed {seed} step {step}: {holders:?}"
                    );
                }
            }
        }
    }
}
