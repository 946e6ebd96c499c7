//! Link settings torch-sys does not make.
fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    // Find libtorch where it was built against without LD_LIBRARY_PATH (the GPU machines set
    // LD_LIBRARY_PATH to their own copy, which takes precedence over a RUNPATH).
    if let Ok(libtorch) = std::env::var("LIBTORCH") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{libtorch}/lib");
    }
    // As-needed linking drops libtorch_cuda.so (nothing references it by symbol), and then CUDA
    // is never available at run time, even on a GPU machine.
    println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
}
