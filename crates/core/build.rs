//! Compiles the C++ shim (libtorch APIs that tch does not bind) against the same
//! libtorch as tch, and lets this crate's test binaries find libtorch without LD_LIBRARY_PATH.
use std::path::PathBuf;

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
        .files(
            sources
                .iter()
                .filter(|p| p.extension().is_some_and(|x| x == "cpp")),
        )
        .compile("accelerate_shim");
}
