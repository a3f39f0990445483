//! Compiles the C++ shim (libtorch APIs that tch does not bind) against the same
//! libtorch as tch, and lets this crate's test binaries find libtorch without LD_LIBRARY_PATH.
use std::path::{Path, PathBuf};

fn main() {
    let lib = PathBuf::from(std::env::var("DEP_TCH_LIBTORCH_LIB").unwrap_or_default());
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    let root = lib.parent().map(PathBuf::from).unwrap_or_default();
    let include = std::env::var("LIBTORCH_INCLUDE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join("include"));
    let abi = std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".to_string());
    let sources: Vec<PathBuf> = std::fs::read_dir("shim")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "cpp" || x == "h"))
        .collect();
    for source in &sources {
        println!("cargo:rerun-if-changed={}", source.display());
    }
    println!("cargo:rerun-if-changed=shim");
    println!("cargo:rerun-if-env-changed=LIBTORCH_INCLUDE");
    cc::Build::new()
        .cpp(true)
        .pic(true)
        .warnings(false)
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .flag("-std=c++17")
        .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={abi}"))
        .flag("-DGLOG_USE_GLOG_EXPORT")
        // c10d's Gloo backend: declarations from Debian's libgloo-dev, code inside libtorch_cpu.
        .define("USE_C10D_GLOO", None)
        .files(sources.iter().filter(|p| p.extension().is_some_and(|x| x == "cpp")))
        .compile("accelerate_shim");
    build_cuda_shim(&root, &include, &lib, &abi);
}

/// The CUDA side of the shim (NCCL, allocator statistics) links libtorch_cuda, so it is
/// a separate shared library, embedded in the engine and loaded only on CUDA hosts. It is
/// built when the CUDA and NCCL headers are found (next to a pip torch, nvidia/*, or under
/// CUDA_HOME); with them found, a failure to compile it fails the build.
fn build_cuda_shim(torch: &Path, include: &Path, lib: &Path, abi: &str) {
    println!("cargo:rustc-check-cfg=cfg(acc_cuda)");
    println!("cargo:rerun-if-changed=shim-cuda");
    println!("cargo:rerun-if-env-changed=CUDA_HOME");
    let nvidia = torch.parent().map(|p| p.join("nvidia")).unwrap_or_default();
    let cuda_home = std::env::var("CUDA_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from("/usr/local/cuda"));
    let cuda = [
        nvidia.join("cu13/include"),
        nvidia.join("cuda_runtime/include"),
        cuda_home.join("include"),
    ]
    .into_iter()
    .find(|d| d.join("cuda_runtime_api.h").exists());
    let nccl = [nvidia.join("nccl/include"), cuda_home.join("include")]
        .into_iter()
        .find(|d| d.join("nccl.h").exists());
    let (Some(cuda), Some(nccl)) = (cuda, nccl) else {
        println!(
            "cargo:warning=CUDA or NCCL headers not found: building without CUDA extras (NCCL, memory statistics)"
        );
        return;
    };
    if !lib.join("libtorch_cuda.so").exists() {
        return;
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap_or_default()).join("libaccelerate_cuda.so");
    let compiler = cc::Build::new().cpp(true).get_compiler();
    let status = compiler
        .to_command()
        .args([
            "-shared",
            "-fPIC",
            "-O2",
            "-w",
            "-std=c++17",
            "-DGLOG_USE_GLOG_EXPORT",
            "-DUSE_C10D_NCCL",
            "-DUSE_C10D_GLOO",
        ])
        .arg(format!("-D_GLIBCXX_USE_CXX11_ABI={abi}"))
        .arg("-I")
        .arg(include)
        .arg("-I")
        .arg(include.join("torch/csrc/api/include"))
        .arg("-I")
        .arg(&cuda)
        .arg("-I")
        .arg(&nccl)
        // NVRTC's header: beside the runtime's in CUDA 13 wheels and CUDA_HOME, its own folder in CUDA 12 wheels.
        .arg("-I")
        .arg(nvidia.join("cuda_nvrtc/include"))
        .args([
            "shim-cuda/cuda.cpp",
            "shim-cuda/jit.cpp",
            "shim-cuda/kernels.cpp",
            "shim-cuda/fp8_quantize.cpp",
            "shim-cuda/layer_norm.cpp",
            "shim-cuda/cross_entropy.cpp",
            "shim-cuda/convert.cpp",
            "shim-cuda/matmul.cpp",
            "shim-cuda/head_backward.cpp",
        ])
        .arg("-o")
        .arg(&out)
        .arg(format!("-L{}", lib.display()))
        .args([
            "-ldl",
            "-Wl,--no-as-needed",
            "-ltorch_cuda",
            "-lc10_cuda",
            "-ltorch_cpu",
            "-ltorch",
            "-lc10",
        ])
        .status();
    match status {
        Ok(s) if s.success() => {
            println!("cargo:rustc-cfg=acc_cuda");
            println!("cargo:rustc-env=ACC_CUDA_SHIM_PATH={}", out.display());
        }
        // The headers are here, so our own sources failed: an error, not a build that would
        // run without its CUDA kernels on a GPU (the compiler's messages are above).
        _ => {
            eprintln!(
                "the CUDA shim (shim-cuda/*.cpp) failed to compile with the CUDA headers found at {}",
                cuda.display()
            );
            std::process::exit(1);
        }
    }
}
