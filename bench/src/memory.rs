//! Memory a benchmark case used: the process's peak resident set (the
//! kernel's high-water mark, reset per case where Linux allows it) and, on a
//! GPU, the card's memory in use sampled while the case runs.

use pulse_models::{Device, gpu_memory};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

/// A `kB` field of `/proc/{pid}/status` (`VmRSS`, `VmHWM`, …) in bytes.
fn status_bytes(pid: &str, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// Resident memory of `pid` in MiB.
pub fn rss_mib(pid: u32) -> Option<f64> {
    status_bytes(&pid.to_string(), "VmRSS").map(|b| b as f64 / (1024.0 * 1024.0))
}

/// Watches memory from `start` to `finish`. A sampling thread runs only
/// for what the kernel does not track itself (RSS where VmHWM cannot be
/// reset, a GPU's memory), so on a CPU with the reset nothing competes with
/// the case being measured.
pub struct PeakMemory {
    high_water_mark_reset: bool,
    stop: Arc<AtomicBool>,
    sampler: Option<JoinHandle<Sampled>>,
}

#[derive(Debug, Clone, Copy)]
pub struct Peaks {
    pub rss_bytes: Option<u64>,
    pub gpu_bytes: Option<u64>,
}

#[derive(Default)]
struct Sampled {
    rss_bytes: u64,
    gpu_bytes: Option<u64>,
}

impl PeakMemory {
    pub fn start(device: &Device) -> Self {
        // Writing 5 to clear_refs resets VmHWM to the current RSS (Linux 4.0+).
        let high_water_mark_reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
        let stop = Arc::new(AtomicBool::new(false));
        let sample_rss = !high_water_mark_reset;
        let sample_gpu = device.is_cuda();
        let sampler = (sample_rss || sample_gpu).then(|| {
            let stop = stop.clone();
            let device = device.clone();
            std::thread::spawn(move || {
                let mut sampled = Sampled::default();
                loop {
                    if sample_rss && let Some(now) = status_bytes("self", "VmRSS") {
                        sampled.rss_bytes = sampled.rss_bytes.max(now);
                    }
                    if sample_gpu && let Some(now) = gpu_memory(&device) {
                        sampled.gpu_bytes =
                            Some(sampled.gpu_bytes.unwrap_or(0).max(now.used_bytes));
                    }
                    if stop.load(Ordering::Relaxed) {
                        return sampled;
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
            })
        });
        PeakMemory {
            high_water_mark_reset,
            stop,
            sampler,
        }
    }

    pub fn finish(self) -> Peaks {
        self.stop.store(true, Ordering::Relaxed);
        let sampled = self
            .sampler
            .and_then(|sampler| sampler.join().ok())
            .unwrap_or_default();
        let rss_bytes = if self.high_water_mark_reset {
            status_bytes("self", "VmHWM")
        } else {
            (sampled.rss_bytes > 0).then_some(sampled.rss_bytes)
        };
        Peaks {
            rss_bytes,
            gpu_bytes: sampled.gpu_bytes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_peak_covers_memory_touched_in_between() {
        let watch = PeakMemory::start(&Device::Cpu);
        let before = status_bytes("self", "VmRSS").unwrap();
        let block = vec![1u8; 64 << 20];
        std::hint::black_box(&block);
        drop(block);
        let peaks = watch.finish();
        assert!(peaks.rss_bytes.unwrap() >= before + (60 << 20), "{peaks:?}");
        assert_eq!(peaks.gpu_bytes, None);
        assert!(rss_mib(std::process::id()).unwrap() > 1.0);
    }
}
