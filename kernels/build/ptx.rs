// Compiles the CUDA sources under kernels/cuda/ to PTX with nvcc. Shared by
// build.rs (`--features cuda`) and tests/ptx.rs, which checks in CI, where no
// GPU exists, that the PTX holds every entry point the Rust side launches.

/// nvcc from `NVCC`, else `$CUDA_ROOT/bin/nvcc` (or CUDA_PATH, CUDA_HOME), else
/// `nvcc` on the PATH.
fn nvcc_path() -> std::path::PathBuf {
    if let Some(nvcc) = std::env::var_os("NVCC") {
        return nvcc.into();
    }
    for root in ["CUDA_ROOT", "CUDA_PATH", "CUDA_HOME"] {
        if let Some(root) = std::env::var_os(root) {
            let nvcc = std::path::Path::new(&root).join("bin").join("nvcc");
            if nvcc.exists() {
                return nvcc;
            }
        }
    }
    "nvcc".into()
}

/// The virtual architecture the PTX targets: `CUDA_COMPUTE_CAP` (e.g. `90`,
/// `90a`) when set, else compute_75, which every GPU since Turing can JIT
/// (CUDA 13 dropped Volta).
fn ptx_arch() -> String {
    let cap = std::env::var("CUDA_COMPUTE_CAP").unwrap_or_default();
    let cap = cap.trim().replace('.', "");
    if cap.is_empty() {
        "compute_75".to_string()
    } else {
        format!("compute_{cap}")
    }
}

/// `nvcc -ptx` of `source` into `out`.
fn compile_ptx(
    nvcc: &std::path::Path,
    source: &std::path::Path,
    out: &std::path::Path,
) -> Result<(), String> {
    let output = std::process::Command::new(nvcc)
        .arg("-ptx")
        .arg(format!("-arch={}", ptx_arch()))
        .args(["-O3", "-std=c++17", "-o"])
        .arg(out)
        .arg(source)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", nvcc.display()))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{} failed on {}:\n{}{}",
            nvcc.display(),
            source.display(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}
