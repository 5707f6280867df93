//! Each CUDA kernel against its CPU twin on random inputs. Needs a GPU and
//! `--features cuda`; ignored otherwise. On a GPU machine:
//! `scripts/test-cuda` (or `cargo test --features cuda -- --ignored`).
#![cfg(feature = "cuda")]

use candle_core::{DType, Device, Tensor};
use pulse_kernels::distance::{self, Rows};
use pulse_kernels::{Pooling, pool};

fn gpu() -> Device {
    Device::new_cuda(0).expect("a CUDA GPU (these tests run only with --ignored on one)")
}

/// xorshift: the same inputs on every machine.
fn random(n: usize, seed: u64) -> Vec<f32> {
    let mut state = seed | 1;
    (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
        })
        .collect()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn pooling_matches_the_cpu_in_every_dtype_and_mode() {
    let gpu = gpu();
    let (batch, seq, dim) = (37, 61, 384);
    let hidden = random(batch * seq * dim, 7);
    // Ragged lengths, one sequence fully masked, one full.
    let mask: Vec<u32> = (0..batch * seq)
        .map(|i| {
            let (b, t) = (i / seq, i % seq);
            let len = match b {
                0 => 0,
                1 => seq,
                _ => 1 + (b * 7) % seq,
            };
            u32::from(t < len)
        })
        .collect();
    // Bound on |gpu − cpu| per dtype: both sum the same (rounded) f32 values,
    // in different orders.
    for (dtype, bound) in [(DType::F32, 1e-5), (DType::F16, 1e-5), (DType::BF16, 1e-5)] {
        let on_cpu = Tensor::from_slice(&hidden, (batch, seq, dim), &Device::Cpu)
            .unwrap()
            .to_dtype(dtype)
            .unwrap();
        let on_gpu = on_cpu.to_device(&gpu).unwrap();
        let mask_cpu = Tensor::from_slice(&mask, (batch, seq), &Device::Cpu).unwrap();
        let mask_gpu = mask_cpu.to_device(&gpu).unwrap();
        for pooling in Pooling::ALL {
            for normalize in [false, true] {
                let want = pool(&on_cpu, &mask_cpu, pooling, normalize).unwrap();
                let got = pool(&on_gpu, &mask_gpu, pooling, normalize).unwrap();
                assert!(got.device().is_cuda(), "the result stays on the GPU");
                let want = want.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                let got = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                let diff = max_abs_diff(&want, &got);
                eprintln!("{dtype:?} {pooling} normalize={normalize}: max |Δ| {diff:.2e}");
                assert!(diff <= bound, "{dtype:?} {pooling} {normalize}: {diff}");
            }
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn pooling_reads_strided_and_offset_tensors() {
    let gpu = gpu();
    let (batch, seq, dim) = (4, 9, 40);
    let wide = random(batch * seq * 2 * dim, 3);
    let mask = vec![1u32; batch * seq];
    let cpu = Tensor::from_slice(&wide, (batch, seq, 2 * dim), &Device::Cpu).unwrap();
    let cpu = cpu.narrow(2, dim, dim).unwrap();
    let mask_cpu = Tensor::from_slice(&mask, (batch, seq), &Device::Cpu).unwrap();
    let want = pool(&cpu, &mask_cpu, Pooling::Mean, true).unwrap();
    let got = pool(
        &cpu.to_device(&gpu).unwrap(),
        &mask_cpu.to_device(&gpu).unwrap(),
        Pooling::Mean,
        true,
    )
    .unwrap();
    let diff = max_abs_diff(
        &want.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        &got.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
    );
    assert!(diff <= 1e-5, "{diff}");
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn knn_matches_the_cpu() {
    let gpu = gpu();
    // Sizes off the kernel's 64-row tiles and 16-value slices; duplicates.
    for (n, dim, k) in [
        (1, 8, 5),
        (2, 3, 5),
        (130, 7, 5),
        (1000, 384, 32),
        (4099, 33, 40),
    ] {
        let mut data = random(n * dim, n as u64);
        if n > 10 {
            let first: Vec<f32> = data[..dim].to_vec();
            data[dim..2 * dim].copy_from_slice(&first);
        }
        let points = Rows::new(&data, dim).unwrap();
        let want = distance::knn(points, k);
        let got = distance::knn_on(points, k, &gpu).unwrap();
        assert_eq!((got.k(), got.len()), (want.k(), want.len()), "n={n}");
        let mut worst = 0f32;
        for i in 0..n {
            let (wi, wd) = want.of(i);
            let (gi, gd) = got.of(i);
            for (j, (&g, &w)) in gd.iter().zip(wd).enumerate() {
                let exact = distance::exact_distance(points.row(i), points.row(gi[j] as usize));
                assert!(gi[j] as usize != i, "point {i} is its own neighbour");
                // The GPU's distances are sums of squared differences: close
                // to exact, and the j-th equals the CPU's j-th.
                assert!(
                    (f64::from(g) - exact).abs() <= 1e-4 * exact.max(1.0),
                    "n={n} i={i}"
                );
                worst = worst.max((g - w).abs() / w.max(1.0));
            }
            // Same neighbours, except where distances tie at the list's end.
            let last = wd.last().copied().unwrap_or(0.0);
            for (j, idx) in wi.iter().enumerate() {
                if wd[j] < last * (1.0 - 1e-4) {
                    assert!(gi.contains(idx), "n={n} i={i}: {idx} missing");
                }
            }
        }
        eprintln!("knn n={n} dim={dim} k={k}: worst relative |Δd| {worst:.2e}");
        assert!(worst <= 1e-3, "n={n}: {worst}");
    }
}
