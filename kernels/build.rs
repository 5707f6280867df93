include!("build/ptx.rs");

fn main() {
    println!("cargo::rerun-if-changed=build/ptx.rs");
    println!("cargo::rerun-if-changed=cuda");
    for var in [
        "NVCC",
        "CUDA_ROOT",
        "CUDA_PATH",
        "CUDA_HOME",
        "CUDA_COMPUTE_CAP",
    ] {
        println!("cargo::rerun-if-env-changed={var}");
    }
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let out_dir =
        std::path::PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let nvcc = nvcc_path();
    let sources = std::fs::read_dir("cuda").expect("kernels/cuda holds the CUDA sources");
    for entry in sources {
        let path = entry.expect("readable kernels/cuda").path();
        if path.extension().is_some_and(|e| e == "cu") {
            let stem = path.file_stem().expect("a .cu file has a stem");
            let out = out_dir.join(stem).with_extension("ptx");
            if let Err(message) = compile_ptx(&nvcc, &path, &out) {
                panic!("{message}");
            }
        }
    }
}
