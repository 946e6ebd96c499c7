//! Link settings torch-sys does not make, and the CUDA memory shim (csrc/cuda_memory.cpp).
use std::path::{Path, PathBuf};

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-changed=csrc/cuda_memory.cpp");
    let libtorch = PathBuf::from(
        std::env::var("LIBTORCH").expect("LIBTORCH must point at libtorch (the Makefile sets it)"),
    );
    // Find libtorch where it was built against without LD_LIBRARY_PATH (the GPU machines set
    // LD_LIBRARY_PATH to their own copy, which takes precedence over a RUNPATH).
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}/lib", libtorch.display());
    // As-needed linking drops libtorch_cuda.so (nothing references it by symbol), and then CUDA
    // is never available at run time, even on a GPU machine.
    println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
    build_cuda_memory_shim(&libtorch);
    build_process_group_shim(&libtorch);
}

/// NCCL's and CUDA's header folders from the pip wheels next to torch (nvidia-nccl-cu13, and
/// nvidia-cuda-runtime/-crt, which scripts/install-torch.sh adds), when all are there.
fn nccl_includes(libtorch: &Path) -> Option<Vec<PathBuf>> {
    let nvidia = libtorch.join("../nvidia");
    let dirs = vec![nvidia.join("cu13/include"), nvidia.join("nccl/include")];
    let needed = [
        dirs[0].join("cuda_runtime_api.h"),
        dirs[0].join("crt/host_config.h"),
        dirs[1].join("nccl.h"),
    ];
    needed.iter().all(|f| f.exists()).then_some(dirs)
}

/// csrc/process_group*.cpp: c10d's TCPStore, ProcessGroupGloo (in libtorch_cpu) and, with
/// NCCL's headers, ProcessGroupNCCL (in libtorch_cuda) behind a C interface. The wheel has no
/// Gloo headers; csrc/gloo-stubs declares what c10d's header needs.
fn build_process_group_shim(libtorch: &Path) {
    for file in [
        "csrc/process_group.cpp",
        "csrc/process_group_nccl.cpp",
        "csrc/process_group_no_nccl.cpp",
        "csrc/gloo-stubs",
    ] {
        println!("cargo:rerun-if-changed={file}");
    }
    let mut build = cc::Build::new();
    build
        .cpp(true)
        .std("c++17")
        .file("csrc/process_group.cpp")
        .include(libtorch.join("include"))
        .include(libtorch.join("include/torch/csrc/api/include"))
        .include("csrc/gloo-stubs")
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        .define("USE_C10D_GLOO", None)
        .warnings(false);
    match nccl_includes(libtorch) {
        Some(dirs) => {
            build
                .file("csrc/process_group_nccl.cpp")
                .define("USE_C10D_NCCL", None);
            for dir in dirs {
                build.include(dir);
            }
        }
        None => {
            println!(
                "cargo:warning=NCCL or CUDA headers not found next to libtorch: building without NCCL"
            );
            build.file("csrc/process_group_no_nccl.cpp");
        }
    }
    build.compile("rlhf_process_group");
    println!("cargo:rustc-link-lib=dylib=torch_cpu");
}

fn build_cuda_memory_shim(libtorch: &Path) {
    cc::Build::new()
        .cpp(true)
        .std("c++17")
        .file("csrc/cuda_memory.cpp")
        .include(libtorch.join("include"))
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        .warnings(false)
        .compile("rlhf_cuda_memory");
    println!("cargo:rustc-link-search=native={}/lib", libtorch.display());
    println!("cargo:rustc-link-lib=dylib=c10");
}
