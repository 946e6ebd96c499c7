//! Who this process is in a multi-process run, from torchrun's environment variables (the
//! operator sets WORLD_SIZE, NODE_RANK, NNODES, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT; the
//! launcher adds RANK and LOCAL_RANK per worker).
use std::collections::HashMap;

use crate::error::{Error, Result};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Topology {
    pub world: usize,
    pub rank: usize,
    pub local_rank: usize,
    pub local_world: usize,
    pub node_rank: usize,
    pub master_addr: String,
    pub master_port: u16,
}

/// The variable `name` of `env` as a whole number, `default` when unset; an error naming the
/// variable when it is something else.
pub fn env_number(env: &HashMap<String, String>, name: &str, default: usize) -> Result<usize> {
    match env.get(name) {
        None => Ok(default),
        Some(v) => v.trim().parse().map_err(|_| {
            Error::invalid(format!("${name}"), format!("{v:?} is not a whole number"))
        }),
    }
}

impl Topology {
    /// One process alone.
    pub fn single() -> Self {
        Self {
            world: 1,
            rank: 0,
            local_rank: 0,
            local_world: 1,
            node_rank: 0,
            master_addr: "127.0.0.1".into(),
            master_port: 29500,
        }
    }

    /// From the variables in `env` (missing ones mean a single process); a variable that is not
    /// a number, or ranks that do not fit the world, are errors naming the variable.
    pub fn from_env(env: &HashMap<String, String>) -> Result<Self> {
        let number = |name: &str, default: usize| env_number(env, name, default);
        let local_world = number("LOCAL_WORLD_SIZE", 1)?.max(1);
        let node_rank = number("NODE_RANK", 0)?;
        let world = number("WORLD_SIZE", local_world * (node_rank + 1))?;
        let local_rank = number("LOCAL_RANK", 0)?;
        let rank = number("RANK", node_rank * local_world + local_rank)?;
        let master_port = number("MASTER_PORT", 29500)?;
        if rank >= world || local_rank >= local_world {
            return Err(Error::invalid(
                "$RANK",
                format!(
                    "rank {rank} (local {local_rank}) does not fit world {world} (local {local_world})"
                ),
            ));
        }
        let master_port = u16::try_from(master_port)
            .map_err(|_| Error::invalid("$MASTER_PORT", format!("{master_port} is not a port")))?;
        let master_addr = env
            .get("MASTER_ADDR")
            .cloned()
            .unwrap_or_else(|| "127.0.0.1".into());
        Ok(Self {
            world,
            rank,
            local_rank,
            local_world,
            node_rank,
            master_addr,
            master_port,
        })
    }

    /// Whether this process writes logs, checkpoints and final models.
    pub fn is_leader(&self) -> bool {
        self.rank == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn no_variables_is_a_single_process() {
        assert_eq!(Topology::from_env(&env(&[])).unwrap(), Topology::single());
    }

    #[test]
    fn reads_torchrun_variables() {
        let t = Topology::from_env(&env(&[
            ("WORLD_SIZE", "8"),
            ("NODE_RANK", "1"),
            ("LOCAL_WORLD_SIZE", "4"),
            ("LOCAL_RANK", "2"),
            ("MASTER_ADDR", "job-0.svc"),
            ("MASTER_PORT", "29400"),
        ]))
        .unwrap();
        assert_eq!(
            (
                t.world,
                t.rank,
                t.local_rank,
                t.master_addr.as_str(),
                t.master_port
            ),
            (8, 6, 2, "job-0.svc", 29400)
        );
        assert!(!t.is_leader());
    }

    #[test]
    fn bad_values_name_the_variable() {
        let err = Topology::from_env(&env(&[("WORLD_SIZE", "two")]))
            .unwrap_err()
            .to_string();
        assert_eq!(err, "$WORLD_SIZE: \"two\" is not a whole number");
        let err = Topology::from_env(&env(&[("WORLD_SIZE", "2"), ("RANK", "2")]))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("$RANK: rank 2"), "{err}");
        assert!(err.contains("does not fit world 2"), "{err}");
    }
}
