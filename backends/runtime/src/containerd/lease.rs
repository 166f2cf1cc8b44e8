//! containerd leases: everything an import or a container creation writes is held by a lease
//! until it is named (an image record, a container), so a failed or interrupted run leaves
//! nothing behind for long and nothing half-made is garbage-collected under us.

use super::ContainerdRuntime;
use crate::{Result, RuntimeError};
use containerd_client::services::v1::leases_client::LeasesClient;
use containerd_client::services::v1::{
    CreateRequest as CreateLeaseRequest, DeleteRequest as DeleteLeaseRequest,
};
use std::collections::HashMap;
use std::time::Duration;

use super::RT;

pub(crate) fn unique() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    format!("{}-{nanos}", std::process::id())
}

/// A containerd lease: resources created under it survive GC until it is deleted. It also
/// expires by itself, so a crashed import leaves nothing behind for long.
pub struct Lease {
    pub id: String,
}

impl Lease {
    pub async fn create(rt: &ContainerdRuntime, ttl: Duration) -> Result<Lease> {
        let expire = prost_types::Timestamp::from(std::time::SystemTime::now() + ttl).to_string();
        let lease = LeasesClient::new(rt.channel().await?)
            .create(rt.req(CreateLeaseRequest {
                id: format!("ecs-init-{}", unique()),
                labels: HashMap::from([("containerd.io/gc.expire".to_string(), expire)]),
            }))
            .await
            .map_err(|s| rt.err("create lease", s))?
            .into_inner()
            .lease
            .ok_or_else(|| RuntimeError::daemon(RT, "create lease", "no lease returned"))?;
        Ok(Lease { id: lease.id })
    }

    /// Best effort: an undeleted lease expires on its own.
    pub async fn delete(self, rt: &ContainerdRuntime) {
        let result = async {
            LeasesClient::new(rt.channel().await?)
                .delete(rt.req(DeleteLeaseRequest {
                    id: self.id.clone(),
                    sync: false,
                }))
                .await
                .map_err(|s| rt.err("delete lease", s))
        }
        .await;
        if let Err(e) = result {
            tracing::warn!(lease = %self.id, error = %e, "could not delete lease; it expires by itself");
        }
    }
}
