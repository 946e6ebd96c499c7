//! The pipeline half of an RLHFJob: the base model, the stages and their hyper-parameters, and
//! the parallelism settings. The operator embeds these types in its CRD; the trainer reads the
//! per-stage [`plan::TrainerConfig`] the operator renders from them. Neither kube nor tch here.

pub mod dag;
pub mod model;
pub mod parallelism;
pub mod plan;
pub mod resolve;
pub mod rl;
pub mod stage;

pub use model::*;
pub use parallelism::*;
pub use plan::*;
pub use resolve::{FieldError, ResolvedPipeline, resolve_pipeline};
pub use rl::*;
pub use stage::*;

/// The pipeline part of an RLHFJob spec. The operator's `RLHFJobSpec` has these same field
/// names, so `rlhf-trainer local JOB.yaml` can read a job manifest's `spec` with this type.
#[derive(serde::Deserialize, serde::Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PipelineSpec {
    pub model: ModelSpec,
    pub stages: Vec<StageSpec>,
    #[serde(default)]
    pub parallelism: Option<ParallelismSpec>,
}
