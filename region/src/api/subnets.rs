//! `ingot.v1.SubnetService`: subnets (admins write, anyone reads) and the leases on them.

use super::{actor, linearizable, status};
use crate::app::subnets::{LeaseQuery, SubnetPatch};
use crate::app::App;
use ingot_common::net::{parse_cidr, parse_ipv4, SubnetMode};
use ingot_common::{validate, DomainError, Mac};
use ingot_proto::convert::{
    dns_from_proto, gateway_from_proto, lease_to_proto, rack_from_proto, ranges_from_proto,
    subnet_from_proto, subnet_to_proto, vlan_from_proto,
};
use ingot_proto::v1::subnet_service_server::SubnetService;
use ingot_proto::v1::*;
use tonic::{Request, Response, Status};

/// SubnetService over [`App`].
pub struct SubnetApi {
    /// The application.
    pub app: App,
}

/// An update request's changes, each field parsed and named on failure.
fn patch(r: UpdateSubnetRequest) -> Result<SubnetPatch, DomainError> {
    Ok(SubnetPatch {
        gateway: r.gateway.as_deref().map(gateway_from_proto).transpose()?,
        dns: r
            .dns
            .map(|l| dns_from_proto("dns", &l.values))
            .transpose()?,
        domain: r.domain,
        dynamic: r
            .dynamic
            .map(|l| ranges_from_proto("dynamic", &l.values))
            .transpose()?,
        reserved: r
            .reserved
            .map(|l| ranges_from_proto("reserved", &l.values))
            .transpose()?,
        vlan: r.vlan.map(vlan_from_proto).transpose()?,
        mode: r
            .mode
            .as_deref()
            .map(|m| SubnetMode::parse("mode", m))
            .transpose()?,
        primary: r.primary.as_deref().map(rack_from_proto),
        secondary: r.secondary.as_deref().map(rack_from_proto),
        lease_time_s: r.lease_time_s,
        pxe_lease_time_s: r.pxe_lease_time_s,
    })
}

/// A lease list request as a query.
fn lease_query(r: &ListLeasesRequest) -> Result<LeaseQuery, DomainError> {
    let subnet = (!r.subnet.is_empty())
        .then(|| parse_cidr("subnet", &r.subnet))
        .transpose()?;
    let mac = if r.mac.is_empty() {
        None
    } else {
        validate::bytes("mac", &r.mac, validate::limits::KEY)?;
        Some(
            r.mac
                .parse::<Mac>()
                .map_err(|e| DomainError::invalid("mac", e.to_string()))?,
        )
    };
    let after = if r.page_token.is_empty() {
        None
    } else {
        validate::bytes("page_token", &r.page_token, validate::limits::KEY)?;
        Some(parse_ipv4("page_token", &r.page_token).map_err(|_| {
            DomainError::invalid("page_token", "not a token from a previous response")
        })?)
    };
    Ok(LeaseQuery {
        subnet,
        mac,
        page_size: r.page_size,
        after,
        linearizable: linearizable(r.consistency),
    })
}

#[tonic::async_trait]
impl SubnetService for SubnetApi {
    async fn create_subnet(
        &self,
        req: Request<CreateSubnetRequest>,
    ) -> Result<Response<Subnet>, Status> {
        let who = actor(&self.app, &req)?;
        who.require_admin("create subnets").map_err(status)?;
        let p = req
            .into_inner()
            .subnet
            .ok_or_else(|| status(DomainError::invalid("subnet", "required")))?;
        let s = subnet_from_proto(p).map_err(status)?;
        let (s, n) = self.app.create_subnet(&who, s).await.map_err(status)?;
        Ok(Response::new(subnet_to_proto(&s, n)))
    }

    async fn get_subnet(&self, req: Request<GetSubnetRequest>) -> Result<Response<Subnet>, Status> {
        let who = actor(&self.app, &req)?;
        let r = req.into_inner();
        let (s, n) = self
            .app
            .get_subnet(&who, &r.cidr, linearizable(r.consistency))
            .await
            .map_err(status)?;
        Ok(Response::new(subnet_to_proto(&s, n)))
    }

    async fn list_subnets(
        &self,
        req: Request<ListSubnetsRequest>,
    ) -> Result<Response<ListSubnetsResponse>, Status> {
        let who = actor(&self.app, &req)?;
        let r = req.into_inner();
        let all = self
            .app
            .list_subnets(&who, linearizable(r.consistency))
            .await
            .map_err(status)?;
        Ok(Response::new(ListSubnetsResponse {
            subnets: all.iter().map(|(s, n)| subnet_to_proto(s, *n)).collect(),
        }))
    }

    async fn update_subnet(
        &self,
        req: Request<UpdateSubnetRequest>,
    ) -> Result<Response<Subnet>, Status> {
        let who = actor(&self.app, &req)?;
        who.require_admin("change subnets").map_err(status)?;
        let r = req.into_inner();
        let cidr = r.cidr.clone();
        let p = patch(r).map_err(status)?;
        let (s, n) = self
            .app
            .update_subnet(&who, &cidr, p)
            .await
            .map_err(status)?;
        Ok(Response::new(subnet_to_proto(&s, n)))
    }

    async fn delete_subnet(
        &self,
        req: Request<DeleteSubnetRequest>,
    ) -> Result<Response<DeleteSubnetResponse>, Status> {
        let who = actor(&self.app, &req)?;
        self.app
            .delete_subnet(&who, &req.into_inner().cidr)
            .await
            .map_err(status)?;
        Ok(Response::new(DeleteSubnetResponse {}))
    }

    async fn list_leases(
        &self,
        req: Request<ListLeasesRequest>,
    ) -> Result<Response<ListLeasesResponse>, Status> {
        let who = actor(&self.app, &req)?;
        let q = lease_query(req.get_ref()).map_err(status)?;
        let (leases, next) = self.app.list_leases(&who, q).await.map_err(status)?;
        Ok(Response::new(ListLeasesResponse {
            leases: leases
                .iter()
                .map(|v| lease_to_proto(&v.lease, v.system_id.as_deref().unwrap_or_default()))
                .collect(),
            next_page_token: next.map(|ip| ip.to_string()).unwrap_or_default(),
        }))
    }
}
