//! This process's children and other processes' states, as `/proc` shows them (proc(5)).

/// The pids of this process's children, of every thread (`/proc/self/task/<tid>/children`).
pub fn child_pids() -> Vec<i32> {
    let mut out = Vec::new();
    for task in std::fs::read_dir("/proc/self/task")
        .into_iter()
        .flatten()
        .flatten()
    {
        let list = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        out.extend(
            list.split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok()),
        );
    }
    out
}

/// This process's children (of every thread), with their state letter from `/proc/<pid>/stat`
/// (`'Z'` for a zombie); a child that vanished while we read is left out.
pub fn children() -> Vec<(i32, char)> {
    let mut out: Vec<(i32, char)> = child_pids()
        .into_iter()
        .filter_map(|pid| Some((pid, stat(pid)?.0)))
        .collect();
    out.sort_unstable();
    out
}

/// The children that are not zombies.
pub fn live_children() -> Vec<i32> {
    children()
        .into_iter()
        .filter(|&(_, s)| s != 'Z')
        .map(|(p, _)| p)
        .collect()
}

/// The fields of a `/proc/<pid>/stat` line after the command name, from the state (field 3) on. The
/// command name may hold spaces and parentheses, so the line is split after its last `)`.
pub fn stat_fields(stat: &str) -> Vec<&str> {
    stat.rsplit_once(')')
        .map(|(_, r)| r.split_whitespace().collect())
        .unwrap_or_default()
}

/// State letter and parent pid of `pid`; `None` if there is no such process.
pub fn stat(pid: i32) -> Option<(char, i32)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let f = stat_fields(&s);
    let state = f.first()?.chars().next()?;
    let ppid = f.get(1)?.parse().ok()?;
    Some((state, ppid))
}

/// The start time of `pid` (field 22 of `/proc/<pid>/stat`, in clock ticks since boot); `None` if
/// there is no such process. With the pid, it names one process: a pid reused later has a later start.
#[cfg(feature = "async")]
pub fn start_time(pid: i32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat_fields(&s).get(19)?.parse().ok()
}
