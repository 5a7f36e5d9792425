//! Which CPU each serving thread runs on. With one serving thread per CPU the process may use,
//! each is pinned to a CPU of its own: left to the kernel, a serving thread is sometimes woken
//! onto a CPU another runnable thread holds (the other serving thread, the load, the upstream),
//! and every connection it serves waits out that thread's slice, a whole scheduler tick (4 ms on
//! the project's VMs): that was the proxy's whole p99 under load. With any other count (more
//! threads than CPUs, or a container whose CPU quota is smaller than the CPUs it may run on) the
//! threads are left to the kernel, whose balancing a fixed placement would then fight.

/// The CPU each of `threads` serving threads is pinned to, or `None` to leave them to the
/// kernel: one CPU per thread, in order, only when `allowed` (the CPUs the process may run on,
/// ascending) holds exactly one per thread.
pub(crate) fn placement(allowed: Vec<usize>, threads: usize) -> Option<Vec<usize>> {
    (threads > 0 && allowed.len() == threads).then_some(allowed)
}

/// The CPUs the calling thread may run on, ascending; `None` where that cannot be read.
#[cfg(target_os = "linux")]
pub(crate) fn allowed_cpus() -> Option<Vec<usize>> {
    use rustix::thread::{CpuSet, sched_getaffinity};
    let set = sched_getaffinity(None).ok()?;
    Some(
        (0..CpuSet::MAX_CPU)
            .filter(|&cpu| set.is_set(cpu))
            .collect(),
    )
}

/// The CPUs the calling thread may run on: unknown off Linux.
#[cfg(not(target_os = "linux"))]
pub(crate) fn allowed_cpus() -> Option<Vec<usize>> {
    None
}

/// Pins the calling thread to `cpu`.
#[cfg(target_os = "linux")]
pub(crate) fn pin_current_thread(cpu: usize) -> std::io::Result<()> {
    use rustix::thread::{CpuSet, sched_setaffinity};
    let mut set = CpuSet::new();
    set.set(cpu);
    sched_setaffinity(None, &set).map_err(std::io::Error::from)
}

/// Pins the calling thread to `cpu`: unsupported off Linux.
#[cfg(not(target_os = "linux"))]
pub(crate) fn pin_current_thread(_cpu: usize) -> std::io::Result<()> {
    Err(std::io::Error::from(std::io::ErrorKind::Unsupported))
}

#[cfg(test)]
mod tests {
    use super::placement;

    #[test]
    fn threads_are_pinned_only_when_there_is_one_per_allowed_cpu() {
        assert_eq!(placement(vec![0, 1], 2), Some(vec![0, 1]));
        // A process confined to some CPUs (taskset, a cpuset) gets those.
        assert_eq!(placement(vec![2, 5, 7], 3), Some(vec![2, 5, 7]));
        // More threads than CPUs, or fewer (a CPU quota below the CPUs the container may
        // use): the kernel places them.
        assert_eq!(placement(vec![0, 1], 4), None);
        assert_eq!(placement(vec![0, 1, 2, 3], 2), None);
        assert_eq!(placement(vec![], 0), None);
    }
}
