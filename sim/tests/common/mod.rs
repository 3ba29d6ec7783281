//! Helpers shared by the simulator's integration tests.

use ingot_sim::{Fleet, FleetConfig, SimMachineInfo};
use serde_json::Value;
use std::time::{Duration, Instant};

pub const PASSWORD: &str = "s3cret-pw";

pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

pub async fn fleet(count: usize, power_delay_ms: u64) -> Fleet {
    Fleet::start(FleetConfig {
        count,
        zones: vec!["zone-1".into(), "zone-2".into()],
        password: Some(PASSWORD.into()),
        power_delay_ms,
        seed: 42,
        ..FleetConfig::default()
    })
    .await
    .unwrap()
}

pub fn system_url(m: &SimMachineInfo) -> String {
    format!("{}/redfish/v1/Systems/{}", m.bmc_url, m.system_id)
}

pub fn reset_url(m: &SimMachineInfo) -> String {
    format!("{}/Actions/ComputerSystem.Reset", system_url(m))
}

/// GET with basic auth; returns status and JSON body (Null if none).
pub async fn get(c: &reqwest::Client, m: &SimMachineInfo, url: &str) -> (u16, Value) {
    let r = c
        .get(url)
        .basic_auth(&m.username, Some(&m.password))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

pub async fn post(c: &reqwest::Client, m: &SimMachineInfo, url: &str, body: Value) -> (u16, Value) {
    let r = c
        .post(url)
        .basic_auth(&m.username, Some(&m.password))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

pub async fn patch(
    c: &reqwest::Client,
    m: &SimMachineInfo,
    url: &str,
    body: Value,
) -> (u16, Value) {
    let r = c
        .patch(url)
        .basic_auth(&m.username, Some(&m.password))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

pub async fn power_state(c: &reqwest::Client, m: &SimMachineInfo) -> String {
    let (s, v) = get(c, m, &system_url(m)).await;
    assert_eq!(s, 200, "{v}");
    v["PowerState"].as_str().unwrap().to_string()
}

/// The MessageId of a Redfish error body.
pub fn message_id(v: &Value) -> String {
    v["error"]["@Message.ExtendedInfo"][0]["MessageId"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Polls `f` every 20 ms until it returns true or `max` passes.
pub async fn eventually(max: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + max;
    while Instant::now() < end {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    f()
}
