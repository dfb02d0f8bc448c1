//! Starting and stopping one child: clean environment, own process group,
//! privileges dropped, SIGTERM then SIGKILL.

use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::fs::{chown, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::component::Component;
use crate::users::Identity;

const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Prepares the runtime directories and starts the component.
pub(crate) fn spawn(c: &Component, id: Option<&Identity>) -> io::Result<Child> {
    for dir in &c.runtime_dirs {
        fs::create_dir_all(&dir.path)?;
        if let Some(id) = id {
            chown(&dir.path, Some(id.uid), Some(id.gid))?;
        }
        fs::set_permissions(&dir.path, fs::Permissions::from_mode(dir.mode))?;
    }
    for f in &c.remove_before_start {
        match fs::remove_file(f) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    let mut cmd = Command::new(&c.program);
    cmd.args(&c.args)
        .env_clear()
        .env("PATH", PATH)
        .stdin(Stdio::null())
        // Its own group, so stopping it reaches its children too
        // (ospd-openvas forks openvas per scan; redis forks to save).
        .process_group(0);
    if let Some(path) = &c.log_file {
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)?;
        }
        let out = OpenOptions::new().create(true).append(true).open(path)?;
        cmd.stderr(out.try_clone()?).stdout(out);
    }
    if let Some(id) = id {
        cmd.env("HOME", &id.home)
            .env("USER", &id.user)
            .env("LOGNAME", &id.user);
        let (uid, gid) = (id.uid, id.gid);
        let groups: Vec<libc::gid_t> = id.groups.clone();
        // std's uid()/gid() would drop every supplementary group, but
        // ospd-openvas needs `redis` to reach the redis socket; so set all
        // three here. Only async-signal-safe syscalls run after fork.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setgroups(groups.len() as _, groups.as_ptr()) != 0 {
                    return Err(io::Error::last_os_error());
                }
                if libc::setgid(gid) != 0 || libc::setuid(uid) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    cmd.envs(c.env.iter().map(|(k, v)| (k, v)));
    cmd.spawn()
}

/// Signals the child's whole process group; errors (already gone) ignored.
pub(crate) fn signal_group(child: &Child, sig: libc::c_int) {
    if let Ok(pgid) = libc::pid_t::try_from(child.id()) {
        // SAFETY: plain syscall on a group we created.
        unsafe {
            libc::kill(-pgid, sig);
        }
    }
}

/// SIGTERM to the group, SIGKILL after `grace`, then reaps the child and
/// sweeps what is left of its group.
pub(crate) fn stop(child: &mut Child, grace: Duration) -> io::Result<ExitStatus> {
    if let Some(status) = child.try_wait()? {
        signal_group(child, libc::SIGKILL);
        return Ok(status);
    }
    signal_group(child, libc::SIGTERM);
    let deadline = Instant::now() + grace;
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if Instant::now() >= deadline {
            signal_group(child, libc::SIGKILL);
            break child.wait()?;
        }
        thread::sleep(Duration::from_millis(20));
    };
    signal_group(child, libc::SIGKILL);
    Ok(status)
}

/// "exit code 1", "killed by signal 9 (SIGKILL)".
pub(crate) fn describe(status: &ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(sig)) => format!("killed by signal {sig} ({})", signal_name(sig)),
        _ => format!("{status}"),
    }
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGABRT => "SIGABRT",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGTERM => "SIGTERM",
        libc::SIGBUS => "SIGBUS",
        _ => "signal",
    }
}
