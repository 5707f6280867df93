//! The project's CUDA sources compile to PTX, and the PTX holds every entry
//! point the Rust side launches (`pulse_kernels::ptx::MODULES`). Needs nvcc,
//! not a GPU: `scripts/cuda-toolchain --compiler` provides one, and
//! `scripts/test` sets `PULSE_REQUIRE_NVCC=1` so that CI cannot skip this.

include!("../build/ptx.rs");

use std::path::{Path, PathBuf};

fn nvcc_available(nvcc: &Path) -> bool {
    std::process::Command::new(nvcc)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Names of the `.entry` (kernel) functions a PTX file defines.
fn entry_points(ptx: &str) -> Vec<String> {
    ptx.lines()
        .filter_map(|line| {
            let rest = line.trim_start().split(".entry").nth(1)?;
            let name = rest.trim_start().split(['(', ' ']).next()?;
            Some(name.to_string())
        })
        .collect()
}

#[test]
fn entry_points_are_read_from_ptx() {
    let ptx = ".visible .entry knn_f32(\n\t.param .u64 a\n)\n.func helper()\n.visible .entry pool_normalize_f16(\n";
    assert_eq!(entry_points(ptx), ["knn_f32", "pool_normalize_f16"]);
}

#[test]
fn ptx_holds_every_kernel_entry_point() {
    let nvcc = nvcc_path();
    if !nvcc_available(&nvcc) {
        assert!(
            std::env::var_os("PULSE_REQUIRE_NVCC").is_none(),
            "PULSE_REQUIRE_NVCC is set but {} does not run",
            nvcc.display()
        );
        eprintln!("skipped: no nvcc (run `eval \"$(scripts/cuda-toolchain --compiler)\"` first)");
        return;
    }
    let sources = Path::new(env!("CARGO_MANIFEST_DIR")).join("cuda");
    let out_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("pulse-kernels-ptx");
    std::fs::create_dir_all(&out_dir).unwrap();
    for module in pulse_kernels::ptx::MODULES {
        let source = sources.join(module.name).with_extension("cu");
        let out = out_dir.join(module.name).with_extension("ptx");
        compile_ptx(&nvcc, &source, &out).unwrap_or_else(|e| panic!("{e}"));
        let found = entry_points(&std::fs::read_to_string(&out).unwrap());
        for entry in module.entry_points {
            assert!(
                found.iter().any(|f| f == entry),
                "{}.cu has no entry point {entry}; it has {found:?}",
                module.name
            );
        }
    }
    // Every .cu file is a module the Rust side knows.
    for file in std::fs::read_dir(&sources).unwrap() {
        let path = file.unwrap().path();
        if path.extension().is_some_and(|e| e == "cu") {
            let stem = path.file_stem().unwrap().to_string_lossy().to_string();
            assert!(
                pulse_kernels::ptx::MODULES.iter().any(|m| m.name == stem),
                "kernels/cuda/{stem}.cu is not in pulse_kernels::ptx::MODULES"
            );
        }
    }
}
