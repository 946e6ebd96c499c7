use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};

use super::meta;
use crate::controller::validate::ValidatedJob;
use crate::names;

/// Headless Service: gives every pod of the gang a stable DNS name (`<pod>.<service>`), so
/// MASTER_ADDR resolves before the pods are ready (publishNotReadyAddresses).
pub fn headless_service(job: &ValidatedJob, stage: &str) -> Service {
    Service {
        metadata: meta(
            job,
            names::service(&job.name, stage),
            names::stage_labels(&job.name, stage),
        ),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            selector: Some(names::stage_labels(&job.name, stage)),
            publish_not_ready_addresses: Some(true),
            ports: Some(vec![ServicePort {
                name: Some("rendezvous".into()),
                port: names::MASTER_PORT as i32,
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}
