//! Multi-process training: who this process is ([`Topology`], from torchrun's variables), the
//! process group over libtorch's c10d ([`ProcessGroup`]), and the launcher that starts one worker
//! per local rank ([`launch`]).
pub mod launch;
mod process_group;
pub mod topology;

pub use process_group::ProcessGroup;
pub use topology::Topology;

use std::rc::Rc;
use std::time::Duration;

use rlhf_spec::Strategy;
use tch::Tensor;

use crate::error::Result;

/// How long ranks wait for each other at rendezvous and in collectives.
pub const TIMEOUT: Duration = Duration::from_secs(300);

/// This process's place in the run and how its optimizer steps are shared.
pub struct Dist {
    pub topology: Topology,
    /// None for a single process.
    pub group: Option<Rc<ProcessGroup>>,
    pub strategy: Strategy,
    /// AdamW state and fp32 master weights live in CPU memory; the step runs there.
    pub offload_optimizer: bool,
}

impl Dist {
    pub fn single() -> Self {
        Self {
            topology: Topology::single(),
            group: None,
            strategy: Strategy::Ddp,
            offload_optimizer: false,
        }
    }

    /// Joins the other ranks (nothing to join for world 1); `cuda`: training runs on GPUs, so
    /// CUDA tensors go through NCCL.
    pub fn connect(
        topology: Topology,
        strategy: Strategy,
        offload_optimizer: bool,
        cuda: bool,
        timeout: Duration,
    ) -> Result<Self> {
        let group = if topology.world > 1 {
            Some(Rc::new(ProcessGroup::connect(
                &topology.master_addr,
                topology.master_port,
                topology.rank,
                topology.world,
                timeout,
                cuda,
            )?))
        } else {
            None
        };
        Ok(Self {
            topology,
            group,
            strategy,
            offload_optimizer,
        })
    }

    pub fn world(&self) -> usize {
        self.topology.world
    }

    pub fn rank(&self) -> usize {
        self.topology.rank
    }

    pub fn is_leader(&self) -> bool {
        self.topology.is_leader()
    }

    /// Element-wise sums of `values` over ranks (the values themselves for one process).
    pub fn sum(&self, values: &[f64]) -> Result<Vec<f64>> {
        let Some(group) = &self.group else {
            return Ok(values.to_vec());
        };
        let t = Tensor::from_slice(values);
        group.all_reduce_sum(&t)?;
        Ok(Vec::<f64>::try_from(&t)?)
    }

    /// Rank 0's value of `t` on every rank.
    pub fn broadcast(&self, t: &Tensor) -> Result<()> {
        match &self.group {
            Some(group) => group.broadcast(t, 0),
            None => Ok(()),
        }
    }
}
