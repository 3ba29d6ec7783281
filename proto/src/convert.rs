//! Every conversion between generated protobuf types and `ingot-common` domain types, in one place.

use crate::v1;
use ingot_common::{Machine, MachineStatus, PowerParams, Zone};

/// Milliseconds since the epoch as a protobuf `Timestamp`.
pub fn timestamp(ms: u64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: (ms / 1000) as i64,
        nanos: ((ms % 1000) * 1_000_000) as i32,
    }
}

/// Domain status → proto enum.
pub fn status_to_proto(s: MachineStatus) -> v1::MachineStatus {
    use v1::MachineStatus as P;
    match s {
        MachineStatus::New => P::New,
        MachineStatus::Commissioning => P::Commissioning,
        MachineStatus::FailedCommissioning => P::FailedCommissioning,
        MachineStatus::Testing => P::Testing,
        MachineStatus::FailedTesting => P::FailedTesting,
        MachineStatus::Ready => P::Ready,
        MachineStatus::Allocated => P::Allocated,
        MachineStatus::Deploying => P::Deploying,
        MachineStatus::Deployed => P::Deployed,
        MachineStatus::FailedDeployment => P::FailedDeployment,
        MachineStatus::Releasing => P::Releasing,
        MachineStatus::FailedReleasing => P::FailedReleasing,
        MachineStatus::DiskErasing => P::DiskErasing,
        MachineStatus::FailedDiskErasing => P::FailedDiskErasing,
        MachineStatus::EnteringRescueMode => P::EnteringRescueMode,
        MachineStatus::FailedEnteringRescueMode => P::FailedEnteringRescueMode,
        MachineStatus::RescueMode => P::RescueMode,
        MachineStatus::ExitingRescueMode => P::ExitingRescueMode,
        MachineStatus::FailedExitingRescueMode => P::FailedExitingRescueMode,
        MachineStatus::Broken => P::Broken,
        MachineStatus::Missing => P::Missing,
        MachineStatus::Retired => P::Retired,
    }
}

/// Proto enum value → domain status; `None` for UNSPECIFIED or unknown numbers.
pub fn status_from_proto(v: i32) -> Option<MachineStatus> {
    let p = v1::MachineStatus::try_from(v).ok()?;
    MachineStatus::ALL
        .into_iter()
        .find(|s| status_to_proto(*s) == p)
}

/// Proto power parameters → domain (absent means "not configured").
pub fn power_from_proto(p: Option<v1::PowerParameters>) -> PowerParams {
    match p {
        Some(p) => PowerParams {
            driver: p.driver,
            params: p.params.into_iter().collect(),
        },
        None => PowerParams::default(),
    }
}

/// Domain machine → proto. Secret power parameters are redacted unless `include_secrets`.
pub fn machine_to_proto(m: &Machine, include_secrets: bool) -> v1::Machine {
    let power = if include_secrets {
        m.power.clone()
    } else {
        m.power.redacted()
    };
    v1::Machine {
        system_id: m.system_id.clone(),
        hostname: m.hostname.clone(),
        arch: m.arch.clone(),
        zone: m.zone.clone(),
        status: status_to_proto(m.status) as i32,
        macs: m.macs.iter().map(|m| m.to_string()).collect(),
        power: Some(v1::PowerParameters {
            driver: power.driver,
            params: power.params.into_iter().collect(),
        }),
        description: m.description.clone(),
        created_at: Some(timestamp(m.created_ms)),
        updated_at: Some(timestamp(m.updated_ms)),
        revision: m.revision,
    }
}

/// Domain zone plus its machine count → proto.
pub fn zone_to_proto(z: &Zone, machine_count: u64) -> v1::Zone {
    v1::Zone {
        name: z.name.clone(),
        description: z.description.clone(),
        machine_count,
        created_at: Some(timestamp(z.created_ms)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_status_roundtrips() {
        for s in MachineStatus::ALL {
            assert_eq!(status_from_proto(status_to_proto(s) as i32), Some(s));
        }
        assert_eq!(status_from_proto(0), None);
        assert_eq!(status_from_proto(999), None);
    }
}
