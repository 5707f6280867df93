//! Memory a benchmark case used: the process's peak resident set (the
//! kernel's high-water mark, reset per case where Linux allows it) and, on a
//! GPU, the card's memory in use sampled while the case runs.

use pulse_models::{Device, gpu_memory};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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

/// Watches memory from `start` to `finish`.
pub struct PeakMemory {
    high_water_mark_reset: bool,
    stop: Arc<AtomicBool>,
    sampler: JoinHandle<(u64, Option<u64>)>,
}

#[derive(Debug, Clone, Copy)]
pub struct Peaks {
    pub rss_bytes: Option<u64>,
    pub gpu_bytes: Option<u64>,
}

impl PeakMemory {
    pub fn start(device: &Device) -> Self {
        // Writing 5 to clear_refs resets VmHWM to the current RSS (Linux 4.0+).
        let high_water_mark_reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
        let stop = Arc::new(AtomicBool::new(false));
        let device = device.clone();
        let sampler = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let rss = AtomicU64::new(0);
                let mut gpu = None;
                loop {
                    if let Some(now) = status_bytes("self", "VmRSS") {
                        rss.fetch_max(now, Ordering::Relaxed);
                    }
                    if let Some(now) = gpu_memory(&device) {
                        gpu = Some(gpu.unwrap_or(0).max(now.used_bytes));
                    }
                    if stop.load(Ordering::Relaxed) {
                        return (rss.into_inner(), gpu);
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
            })
        };
        PeakMemory {
            high_water_mark_reset,
            stop,
            sampler,
        }
    }

    pub fn finish(self) -> Peaks {
        self.stop.store(true, Ordering::Relaxed);
        let (sampled_rss, gpu_bytes) = self.sampler.join().unwrap_or((0, None));
        let rss_bytes = if self.high_water_mark_reset {
            status_bytes("self", "VmHWM")
        } else {
            (sampled_rss > 0).then_some(sampled_rss)
        };
        Peaks {
            rss_bytes,
            gpu_bytes,
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
