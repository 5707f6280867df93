//! The project's CUDA modules (`kernels/cuda/*.cu`, compiled to PTX by
//! build.rs under the `cuda` feature) and the entry points the Rust side
//! launches from each. The list is here, outside the feature, so that a test
//! can check the PTX against it on machines without a GPU.

#[derive(Debug, Clone, Copy)]
pub struct PtxModule {
    /// The source file's stem under `kernels/cuda/`.
    pub name: &'static str,
    pub entry_points: &'static [&'static str],
    /// The module's PTX, as nvcc made it at build time.
    #[cfg(feature = "cuda")]
    pub ptx: &'static str,
}

pub const POOLING: PtxModule = PtxModule {
    name: "pooling",
    entry_points: &[
        "pool_normalize_f32",
        "pool_normalize_f16",
        "pool_normalize_bf16",
    ],
    #[cfg(feature = "cuda")]
    ptx: include_str!(concat!(env!("OUT_DIR"), "/pooling.ptx")),
};

pub const DISTANCE: PtxModule = PtxModule {
    name: "distance",
    entry_points: &["knn_f32"],
    #[cfg(feature = "cuda")]
    ptx: include_str!(concat!(env!("OUT_DIR"), "/distance.ptx")),
};

pub const MODULES: [PtxModule; 2] = [POOLING, DISTANCE];

#[cfg(feature = "cuda")]
impl PtxModule {
    /// Loads one of the module's entry points on `device`; the module is
    /// loaded once per device and cached there.
    pub(crate) fn function(
        &self,
        device: &candle_core::CudaDevice,
        entry_point: &str,
    ) -> candle_core::Result<candle_core::cuda::cudarc::driver::CudaFunction> {
        debug_assert!(self.entry_points.contains(&entry_point));
        let function = device.get_or_load_custom_func(
            entry_point,
            &format!("pulse_kernels_{}", self.name),
            self.ptx,
        )?;
        Ok(function.into_cuda_function())
    }
}
