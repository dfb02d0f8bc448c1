//! System figures for heartbeats, from sysinfo. One collector lives for the daemon's
//! lifetime because CPU usage is the difference between two refreshes.

use std::path::{Path, PathBuf};
use std::time::Instant;

use outpost_wire::sensor::{Metrics, Temperature};
use sysinfo::{Components, Disks, System};

pub struct MetricsCollector {
    sys: System,
    disks: Disks,
    components: Components,
    data_dir: PathBuf,
    last_cpu_refresh: Instant,
}

impl MetricsCollector {
    pub fn new(data_dir: &Path) -> MetricsCollector {
        let mut sys = System::new();
        // Prime the CPU counters so the first heartbeat has a real figure.
        sys.refresh_cpu_usage();
        MetricsCollector {
            sys,
            disks: Disks::new_with_refreshed_list(),
            components: Components::new_with_refreshed_list(),
            data_dir: data_dir
                .canonicalize()
                .unwrap_or_else(|_| data_dir.to_owned()),
            last_cpu_refresh: Instant::now(),
        }
    }

    pub fn collect(&mut self) -> Metrics {
        // CPU usage is meaningless over less than sysinfo's minimum interval (the first
        // heartbeat comes right after start-up), so wait out the rest of it.
        let since = self.last_cpu_refresh.elapsed();
        if since < sysinfo::MINIMUM_CPU_UPDATE_INTERVAL {
            std::thread::sleep(sysinfo::MINIMUM_CPU_UPDATE_INTERVAL - since);
        }
        self.sys.refresh_cpu_usage();
        self.last_cpu_refresh = Instant::now();
        self.sys.refresh_memory();
        // Re-list: the data partition may be mounted after the daemon started.
        self.disks.refresh(true);
        self.components.refresh(true);

        let mounts: Vec<(&Path, u64, u64)> = self
            .disks
            .list()
            .iter()
            .map(|d| (d.mount_point(), d.total_space(), d.available_space()))
            .collect();
        let (disk_total, disk_avail) = disk_of(&self.data_dir, &mounts).unwrap_or((0, 0));

        Metrics {
            cpu_percent: self.sys.global_cpu_usage(),
            load_avg_1m: System::load_average().one,
            mem_total_bytes: self.sys.total_memory(),
            mem_used_bytes: self.sys.used_memory(),
            disk_total_bytes: disk_total,
            disk_used_bytes: disk_total.saturating_sub(disk_avail),
            temperatures: self
                .components
                .list()
                .iter()
                .filter_map(|c| {
                    Some(Temperature {
                        label: c.label().to_owned(),
                        celsius: c.temperature().filter(|t| t.is_finite())?,
                    })
                })
                .collect(),
        }
    }
}

/// System uptime in seconds.
pub fn uptime_s() -> u64 {
    System::uptime()
}

/// (total, available) of the filesystem holding `path`: the mount with the longest
/// mount point that is a prefix of it.
fn disk_of(path: &Path, mounts: &[(&Path, u64, u64)]) -> Option<(u64, u64)> {
    mounts
        .iter()
        .filter(|(m, _, _)| path.starts_with(m))
        .max_by_key(|(m, _, _)| m.components().count())
        .map(|&(_, total, avail)| (total, avail))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_innermost_mount() {
        let mounts = [
            (Path::new("/"), 100, 50),
            (Path::new("/data"), 1000, 900),
            (Path::new("/dat"), 7, 7),
        ];
        assert_eq!(
            disk_of(Path::new("/data/outpost"), &mounts),
            Some((1000, 900))
        );
        assert_eq!(disk_of(Path::new("/var/lib"), &mounts), Some((100, 50)));
        assert_eq!(disk_of(Path::new("/x"), &mounts[1..]), None);
    }

    #[test]
    fn collects_real_figures_on_this_host() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = MetricsCollector::new(dir.path());
        let m = c.collect();
        assert!(m.mem_total_bytes > 0);
        assert!(m.mem_used_bytes <= m.mem_total_bytes);
        assert!(m.disk_used_bytes <= m.disk_total_bytes);
        assert!((0.0..=100.0).contains(&m.cpu_percent));
        assert!(uptime_s() > 0);
    }
}
