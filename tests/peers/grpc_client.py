#!/usr/bin/env python3
"""Ingot API peer: a real third-party gRPC implementation (Python grpcio) talking to an ingot-region.

Usage: grpc_client.py --endpoint 127.0.0.1:PORT --ca CA_FILE --token TOKEN [--proto-dir DIR] [--timeout S]

Generates Python stubs at run time from the repository's proto/ directory with grpc_tools.protoc (into a temp
dir), connects over TLS verifying the region certificate against CA_FILE with server name "ingot-region", and
checks, in order:
  health          grpc.health.v1.Health/Check (no token) answers SERVING
  reflection      reflection v1alpha list_services (no token) lists the ingot.v1 services and grpc.health.v1.Health
  create          MachineService/CreateMachine with a random MAC and hostname
  get_by_mac      MachineService/GetMachine by that MAC returns the same machine
  list            MachineService/ListMachines finds it
  lifecycle       Commission, GetBootCredentials, AgentService ReportInventory + ReportResult -> READY; the
                  finished boot's token is then refused (UNAUTHENTICATED)
  allocate_idempotent  Allocate twice with one request id -> same machine, second replayed; GetMachine by consumer
  watch           Watch from the creation revision streams the machine's changes up to ALLOCATED
  release         Release twice -> RELEASING/READY both times
  bad_mac         CreateMachine with a malformed MAC fails with INVALID_ARGUMENT whose details mention macs[0]
  wrong_token     a call with a wrong bearer token fails with UNAUTHENTICATED
  no_token        a call without any token fails with UNAUTHENTICATED
Prints one JSON line {"ok": bool, "checks": {...}, "elapsed_ms": N} and exits 0 only if every check passed
(1: a check failed, 2: could not set up: bad arguments, stub generation, connection).
Needs: grpcio grpcio-tools grpcio-health-checking grpcio-reflection (scripts/install-test-peers.sh).
"""
import argparse
import importlib
import importlib.resources
import json
import os
import secrets
import sys
import tempfile
import time

REQUIRED_SERVICES = [
    "ingot.v1.MachineService",
    "ingot.v1.ZoneService",
    "ingot.v1.ClusterService",
    "grpc.health.v1.Health",
]
SERVER_NAME = "ingot-region"


def fail_setup(msg, t0):
    print(json.dumps({"ok": False, "error": msg, "elapsed_ms": int((time.monotonic() - t0) * 1000)}))
    sys.exit(2)


def generate_stubs(proto_dir, out_dir):
    """Runs grpc_tools.protoc on every proto/ingot/v1/*.proto; returns the generated module names."""
    from grpc_tools import protoc

    include = str(importlib.resources.files("grpc_tools") / "_proto")  # google/protobuf/timestamp.proto etc.
    rel = []
    for root, _dirs, files in os.walk(proto_dir):
        for f in sorted(files):
            if f.endswith(".proto"):
                rel.append(os.path.relpath(os.path.join(root, f), proto_dir))
    if not rel:
        raise RuntimeError(f"no .proto files under {proto_dir}")
    args = ["grpc_tools.protoc", f"-I{proto_dir}", f"-I{include}",
            f"--python_out={out_dir}", f"--grpc_python_out={out_dir}"] + sorted(rel)
    rc = protoc.main(args)
    if rc != 0:
        raise RuntimeError(f"grpc_tools.protoc exited {rc} for {rel}")
    sys.path.insert(0, out_dir)
    return sorted(rel)


def main():
    t0 = time.monotonic()
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--endpoint", required=True, help="host:port of a region's API")
    ap.add_argument("--ca", required=True, help="cluster CA certificate (PEM), e.g. DATA_DIR/tls/ca.crt")
    ap.add_argument("--token", help="admin bearer token")
    ap.add_argument("--token-file", help="file holding the bearer token (e.g. DATA_DIR/admin.token)")
    ap.add_argument("--proto-dir", default=os.path.normpath(os.path.join(here, "..", "..", "proto")))
    ap.add_argument("--timeout", type=float, default=10.0, help="deadline of each call, seconds")
    a = ap.parse_args()
    token = a.token
    if token is None and a.token_file:
        with open(a.token_file, encoding="utf-8") as f:
            token = f.read().strip()
    if not token:
        fail_setup("--token or --token-file is required", t0)

    try:
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc
        from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
    except ImportError as e:
        fail_setup(f"missing Python package ({e}); run scripts/install-test-peers.sh", t0)

    tmp = tempfile.TemporaryDirectory(prefix="ingot-pystubs-")
    try:
        generate_stubs(a.proto_dir, tmp.name)
        machine_pb2 = importlib.import_module("ingot.v1.machine_pb2")
        machine_grpc = importlib.import_module("ingot.v1.machine_pb2_grpc")
        zone_pb2 = importlib.import_module("ingot.v1.zone_pb2")
        zone_grpc = importlib.import_module("ingot.v1.zone_pb2_grpc")
    except Exception as e:  # noqa: BLE001 - report any codegen/import problem as a setup failure
        fail_setup(f"stub generation from {a.proto_dir} failed: {e}", t0)

    try:
        with open(a.ca, "rb") as f:
            ca_pem = f.read()
    except OSError as e:
        fail_setup(f"cannot read CA file: {e}", t0)
    creds = grpc.ssl_channel_credentials(root_certificates=ca_pem)
    channel = grpc.secure_channel(a.endpoint, creds, options=[("grpc.ssl_target_name_override", SERVER_NAME)])
    try:
        grpc.channel_ready_future(channel).result(timeout=a.timeout)
    except grpc.FutureTimeoutError:
        fail_setup(f"could not connect to {a.endpoint} over TLS within {a.timeout}s", t0)

    auth = (("authorization", f"Bearer {token}"),)
    checks = {}

    def check(name, fn):
        c0 = time.monotonic()
        try:
            ok, detail = fn()
        except grpc.RpcError as e:
            ok, detail = False, f"{e.code().name}: {e.details()}"
        except Exception as e:  # noqa: BLE001 - a check must not abort the others
            ok, detail = False, f"{type(e).__name__}: {e}"
        checks[name] = {"ok": bool(ok), "detail": detail, "ms": round((time.monotonic() - c0) * 1000, 1)}
        return ok

    def expect_code(call, code, must_mention=None):
        try:
            call()
        except grpc.RpcError as e:
            details = e.details() or ""
            ok = e.code() == code and (must_mention is None or must_mention in details)
            return ok, f"{e.code().name}: {details}"
        return False, f"call succeeded, expected {code.name}"

    # 1. health, no token
    def health():
        r = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=a.timeout)
        name = health_pb2.HealthCheckResponse.ServingStatus.Name(r.status)
        return r.status == health_pb2.HealthCheckResponse.SERVING, name
    check("health", health)

    # 2. reflection v1alpha, no token
    def reflection():
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        reqs = iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        names = []
        for resp in stub.ServerReflectionInfo(reqs, timeout=a.timeout):
            if resp.HasField("error_response"):
                return False, f"error_response: {resp.error_response.error_message}"
            names.extend(s.name for s in resp.list_services_response.service)
        missing = [s for s in REQUIRED_SERVICES if s not in names]
        return not missing, {"services": sorted(names), "missing": missing}
    check("reflection", reflection)

    machines = machine_grpc.MachineServiceStub(channel)
    zones = zone_grpc.ZoneServiceStub(channel)
    mac = "02:" + ":".join(f"{b:02x}" for b in secrets.token_bytes(5))  # locally administered, unicast
    hostname = f"py-peer-{secrets.token_hex(4)}"
    created = {}

    # 3. create
    def create():
        m = machines.CreateMachine(machine_pb2.CreateMachineRequest(hostname=hostname, macs=[mac]),
                                   metadata=auth, timeout=a.timeout)
        created["m"] = m
        ok = bool(m.system_id) and m.hostname == hostname and list(m.macs) == [mac]
        status = machine_pb2.MachineStatus.Name(m.status)
        return ok, {"system_id": m.system_id, "hostname": m.hostname, "macs": list(m.macs), "status": status,
                    "zone": m.zone, "revision": m.revision}
    check("create", create)

    # 4. get by MAC
    def get_by_mac():
        m = machines.GetMachine(machine_pb2.GetMachineRequest(mac=mac), metadata=auth, timeout=a.timeout)
        want = created.get("m")
        ok = want is not None and m.system_id == want.system_id and m.hostname == hostname
        return ok, {"system_id": m.system_id, "hostname": m.hostname}
    check("get_by_mac", get_by_mac)

    # 5. list (bounded paging; the machine must be in the listing)
    def list_machines():
        want = created.get("m")
        token, seen, pages = "", 0, 0
        found = False
        for pages in range(1, 101):
            r = machines.ListMachines(machine_pb2.ListMachinesRequest(page_size=500, page_token=token),
                                      metadata=auth, timeout=a.timeout)
            seen += len(r.machines)
            found = found or (want is not None and any(m.system_id == want.system_id for m in r.machines))
            token = r.next_page_token
            if not token:
                break
        return found, {"listed": seen, "pages": pages, "total_size": r.total_size}
    check("list", list_machines)

    agent_pb2 = importlib.import_module("ingot.v1.agent_pb2")
    agent_grpc = importlib.import_module("ingot.v1.agent_pb2_grpc")
    agent = agent_grpc.AgentServiceStub(channel)
    S = machine_pb2.MachineStatus

    def ref():
        return machine_pb2.MachineRef(system_id=created["m"].system_id)

    # 5b. lifecycle as the in-band agent would drive it: commission, boot credentials, inventory, result
    def lifecycle():
        m = machines.Commission(machine_pb2.CommissionRequest(machine=ref()), metadata=auth, timeout=a.timeout)
        if m.status != S.Value("MACHINE_STATUS_COMMISSIONING"):
            return False, f"after Commission: {S.Name(m.status)}"
        cred = machines.GetBootCredentials(machine_pb2.GetBootCredentialsRequest(machine=ref()),
                                           metadata=auth, timeout=a.timeout)
        inv = machine_pb2.Inventory(cpu_count=16, memory_mib=65536,
                                    disks=[machine_pb2.Disk(name="nvme0n1", size_gib=960, rotational=False)],
                                    nics=[machine_pb2.Nic(name="eno1", mac=mac, speed_mbps=25000, link=True)])
        agent.ReportInventory(agent_pb2.ReportInventoryRequest(system_id=cred.system_id, boot_token=cred.token,
                                                               inventory=inv), timeout=a.timeout)
        r = agent.ReportResult(agent_pb2.ReportResultRequest(system_id=cred.system_id, boot_token=cred.token,
                                                             success=True), timeout=a.timeout)
        ok = r.status == S.Value("MACHINE_STATUS_READY")
        # The finished boot's token is dead.
        stale_ok, stale = expect_code(lambda: agent.ReportProgress(agent_pb2.ReportProgressRequest(
            system_id=cred.system_id, boot_token=cred.token, message="late", percent=1), timeout=a.timeout),
            grpc.StatusCode.UNAUTHENTICATED)
        return ok and stale_ok, {"status": S.Name(r.status), "purpose": cred.purpose, "stale_token": stale}
    check("lifecycle", lifecycle)

    # 5c. allocate twice with one request id: the same machine, the second marked replayed
    rid = f"py-{secrets.token_hex(8)}"
    consumer = f"capi-{secrets.token_hex(4)}"

    def allocate():
        req = machine_pb2.AllocateRequest(request_id=rid, consumer=consumer,
                                          constraints=machine_pb2.Constraints(system_id=created["m"].system_id,
                                                                              min_cpu_count=8))
        r1 = machines.Allocate(req, metadata=auth, timeout=a.timeout)
        r2 = machines.Allocate(req, metadata=auth, timeout=a.timeout)
        by_consumer = machines.GetMachine(machine_pb2.GetMachineRequest(consumer=consumer), metadata=auth,
                                          timeout=a.timeout)
        ids = [m.system_id for m in r1.machines] + [m.system_id for m in r2.machines]
        ok = (ids == [created["m"].system_id] * 2 and not r1.replayed and r2.replayed
              and by_consumer.provider_id.endswith("/" + created["m"].system_id))
        return ok, {"ids": ids, "replayed": [r1.replayed, r2.replayed], "provider_id": by_consumer.provider_id}
    check("allocate_idempotent", allocate)

    # 5d. watch from the creation revision: the stream replays the machine's changes up to Allocated
    def watch():
        seen = []
        stream = machines.Watch(machine_pb2.WatchRequest(from_revision=created["m"].revision), metadata=auth,
                                timeout=a.timeout)
        try:
            for ev in stream:
                if ev.machine.system_id == created["m"].system_id:
                    seen.append(S.Name(ev.machine.status))
                    if ev.machine.status == S.Value("MACHINE_STATUS_ALLOCATED"):
                        break
        finally:
            stream.cancel()
        return bool(seen) and seen[-1] == "MACHINE_STATUS_ALLOCATED", {"statuses": seen}
    check("watch", watch)

    # 5e. release (idempotent: a second release succeeds too)
    def release():
        r1 = machines.Release(machine_pb2.ReleaseRequest(machine=ref()), metadata=auth, timeout=a.timeout)
        r2 = machines.Release(machine_pb2.ReleaseRequest(machine=ref()), metadata=auth, timeout=a.timeout)
        okst = {S.Value("MACHINE_STATUS_RELEASING"), S.Value("MACHINE_STATUS_READY")}
        return r1.status in okst and r2.status in okst, [S.Name(r1.status), S.Name(r2.status)]
    check("release", release)

    # 6. bad MAC -> INVALID_ARGUMENT naming macs[0]
    def bad_mac():
        return expect_code(lambda: machines.CreateMachine(
            machine_pb2.CreateMachineRequest(hostname=f"py-bad-{secrets.token_hex(3)}", macs=["zz:not:a:mac"]),
            metadata=auth, timeout=a.timeout), grpc.StatusCode.INVALID_ARGUMENT, must_mention="macs[0]")
    check("bad_mac", bad_mac)

    # 7. wrong token / no token -> UNAUTHENTICATED
    def wrong_token():
        bad = (("authorization", f"Bearer {secrets.token_hex(16)}"),)
        return expect_code(lambda: zones.ListZones(zone_pb2.ListZonesRequest(), metadata=bad, timeout=a.timeout),
                           grpc.StatusCode.UNAUTHENTICATED)
    check("wrong_token", wrong_token)

    def no_token():
        return expect_code(lambda: zones.ListZones(zone_pb2.ListZonesRequest(), timeout=a.timeout),
                           grpc.StatusCode.UNAUTHENTICATED)
    check("no_token", no_token)

    channel.close()
    tmp.cleanup()
    ok = all(c["ok"] for c in checks.values())
    print(json.dumps({"ok": ok, "endpoint": a.endpoint, "grpcio": grpc.__version__, "checks": checks,
                      "elapsed_ms": int((time.monotonic() - t0) * 1000)}, default=str))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
