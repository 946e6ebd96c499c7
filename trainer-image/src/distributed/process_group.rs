//! A safe process group over libtorch's c10d (csrc/process_group.cpp): TCPStore rendezvous and
//! Gloo collectives on tch tensors. c10d does the communication; nothing here is home-made.
#![allow(unsafe_code)] // the FFI boundary to the C++ shim, one call per collective

use std::ffi::{CString, c_char, c_void};
use std::time::Duration;

use tch::Tensor;

use crate::error::{Error, Result};

#[repr(C)]
struct RawGroup {
    _private: [u8; 0],
}

unsafe extern "C" {
    fn rlhf_group_new(
        host: *const c_char,
        port: u16,
        rank: i32,
        world: i32,
        timeout_ms: i64,
        nccl: i32,
        err: *mut c_char,
        len: usize,
    ) -> *mut RawGroup;
    fn rlhf_group_free(group: *mut RawGroup);
    fn rlhf_all_reduce_sum(
        group: *mut RawGroup,
        t: *const c_void,
        err: *mut c_char,
        len: usize,
    ) -> i32;
    fn rlhf_broadcast(
        group: *mut RawGroup,
        t: *const c_void,
        root: i32,
        err: *mut c_char,
        len: usize,
    ) -> i32;
    fn rlhf_all_gather(
        group: *mut RawGroup,
        out: *const c_void,
        input: *const c_void,
        err: *mut c_char,
        len: usize,
    ) -> i32;
    fn rlhf_reduce_scatter_sum(
        group: *mut RawGroup,
        out: *const c_void,
        input: *const c_void,
        err: *mut c_char,
        len: usize,
    ) -> i32;
    fn rlhf_barrier(group: *mut RawGroup, err: *mut c_char, len: usize) -> i32;
}

const ERR_LEN: usize = 1024;

/// The message a shim call wrote into its error buffer.
fn message(buf: &[u8]) -> String {
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

pub struct ProcessGroup {
    raw: *mut RawGroup,
    rank: usize,
    world: usize,
}

impl ProcessGroup {
    /// Joins the group of `world` processes meeting at `host:port` (rank 0 serves the store);
    /// fails with a clear error when a peer does not arrive within `timeout`. CPU tensors go
    /// through Gloo; with `nccl`, CUDA tensors go through NCCL.
    pub fn connect(
        host: &str,
        port: u16,
        rank: usize,
        world: usize,
        timeout: Duration,
        nccl: bool,
    ) -> Result<Self> {
        let c_host =
            CString::new(host).map_err(|_| Error::invalid("MASTER_ADDR", "contains a NUL byte"))?;
        let mut err = [0u8; ERR_LEN];
        // SAFETY: the host string and error buffer outlive the call; the shim copies the host.
        let raw = unsafe {
            rlhf_group_new(
                c_host.as_ptr(),
                port,
                rank as i32,
                world as i32,
                timeout.as_millis() as i64,
                i32::from(nccl),
                err.as_mut_ptr().cast(),
                ERR_LEN,
            )
        };
        if raw.is_null() {
            return Err(Error::Distributed(format!(
                "rank {rank} of {world}: rendezvous at {host}:{port} failed within {:?}: {}",
                timeout,
                message(&err)
            )));
        }
        Ok(Self { raw, rank, world })
    }

    pub fn rank(&self) -> usize {
        self.rank
    }

    pub fn world(&self) -> usize {
        self.world
    }

    fn check(
        &self,
        what: &str,
        tensors: &[&Tensor],
        call: impl FnOnce(*mut c_char) -> i32,
    ) -> Result<()> {
        if let Some(t) = tensors.iter().find(|t| !t.is_contiguous()) {
            return Err(Error::Distributed(format!(
                "{what}: a tensor of shape {:?} is not contiguous",
                t.size()
            )));
        }
        let mut err = [0u8; ERR_LEN];
        match call(err.as_mut_ptr().cast()) {
            0 => Ok(()),
            _ => Err(Error::Distributed(format!(
                "{what} on rank {} of {}: {}",
                self.rank,
                self.world,
                message(&err)
            ))),
        }
    }

    /// `t` becomes the sum of every rank's `t`.
    pub fn all_reduce_sum(&self, t: &Tensor) -> Result<()> {
        // SAFETY: `t` is a live tch tensor (an at::Tensor*) for the whole blocking call.
        self.check("all_reduce", &[t], |err| unsafe {
            rlhf_all_reduce_sum(self.raw, t.as_ptr().cast(), err, ERR_LEN)
        })
    }

    /// `t` becomes rank `root`'s `t`.
    pub fn broadcast(&self, t: &Tensor, root: usize) -> Result<()> {
        // SAFETY: as in all_reduce_sum.
        self.check("broadcast", &[t], |err| unsafe {
            rlhf_broadcast(self.raw, t.as_ptr().cast(), root as i32, err, ERR_LEN)
        })
    }

    /// `out` (world x input's numel) receives every rank's `input`, in rank order.
    pub fn all_gather(&self, out: &Tensor, input: &Tensor) -> Result<()> {
        // SAFETY: as in all_reduce_sum, for both tensors.
        self.check("all_gather", &[out, input], |err| unsafe {
            rlhf_all_gather(
                self.raw,
                out.as_ptr().cast(),
                input.as_ptr().cast(),
                err,
                ERR_LEN,
            )
        })
    }

    /// `out` receives this rank's chunk (rank-th of world equal chunks) of the sum of `input`.
    pub fn reduce_scatter_sum(&self, out: &Tensor, input: &Tensor) -> Result<()> {
        // SAFETY: as in all_reduce_sum, for both tensors.
        self.check("reduce_scatter", &[out, input], |err| unsafe {
            rlhf_reduce_scatter_sum(
                self.raw,
                out.as_ptr().cast(),
                input.as_ptr().cast(),
                err,
                ERR_LEN,
            )
        })
    }

    pub fn barrier(&self) -> Result<()> {
        // SAFETY: the group is live until drop.
        self.check("barrier", &[], |err| unsafe {
            rlhf_barrier(self.raw, err, ERR_LEN)
        })
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        // SAFETY: `raw` came from rlhf_group_new and is freed once.
        unsafe { rlhf_group_free(self.raw) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_that_never_arrives_is_a_clear_error() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let err = ProcessGroup::connect("127.0.0.1", port, 0, 2, Duration::from_secs(2), false)
            .err()
            .expect("rank 1 never comes")
            .to_string();
        assert!(
            err.starts_with(&format!(
                "distributed: rank 0 of 2: rendezvous at 127.0.0.1:{port} failed within 2s: "
            )),
            "{err}"
        );
    }

    #[test]
    fn nccl_without_a_gpu_is_an_error_or_unused_never_a_crash() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        match ProcessGroup::connect("127.0.0.1", port, 0, 1, Duration::from_secs(10), true) {
            // CPU tensors still go through Gloo.
            Ok(g) => g.all_reduce_sum(&Tensor::from_slice(&[1.0f32])).unwrap(),
            Err(e) => assert!(e.to_string().contains("rendezvous at 127.0.0.1"), "{e}"),
        }
    }

    #[test]
    fn collectives_on_a_group_of_one() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let g =
            ProcessGroup::connect("127.0.0.1", port, 0, 1, Duration::from_secs(10), false).unwrap();
        let t = Tensor::from_slice(&[1.0f32, 2.0]);
        g.all_reduce_sum(&t).unwrap();
        assert_eq!(t, Tensor::from_slice(&[1.0f32, 2.0]));
        let out = Tensor::zeros([2], (tch::Kind::Float, tch::Device::Cpu));
        g.all_gather(&out, &t).unwrap();
        assert_eq!(out, t);
        let err = g
            .all_reduce_sum(
                &Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0])
                    .view([2, 2])
                    .tr(),
            )
            .unwrap_err()
            .to_string();
        assert!(err.contains("is not contiguous"), "{err}");
        g.barrier().unwrap();
    }
}
