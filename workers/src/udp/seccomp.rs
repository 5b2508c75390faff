//! Test aid: a seccomp filter that makes `io_uring_setup` fail, as a hardened container or
//! `sysctl kernel.io_uring_disabled=2` would, so the epoll fallback can be tested for real.
//!
//! Seccomp filters are inherited across `fork` and survive `execve`, so a test can run the
//! daemon under the filter with [`deny_io_uring_on_spawn`]. Only `io_uring_setup` is denied
//! (with `EPERM`, what the sysctl returns); everything else is allowed.
//!
//! Owns: the filter program and its two installers. A test aid: no code of the daemon, the page
//! server or the CLI installs it, and it uses nothing else of `udp`.

use std::io;
use std::os::unix::process::CommandExt;
use std::process::Command;

// seccomp_data layout: `int nr` at offset 0, `u32 arch` at offset 4.
const OFFSET_NR: u32 = 0;
const OFFSET_ARCH: u32 = 4;

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH_NATIVE: u32 = 0xC000_003E; // EM_X86_64 | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH_NATIVE: u32 = 0xC000_00B7; // EM_AARCH64 | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE

/// `io_uring_setup` is 425 on every architecture (the unified syscall table from 403 on).
const NR_IO_URING_SETUP: u32 = 425;
/// The same call through the x32 ABI, which shares the x86_64 audit arch.
const NR_IO_URING_SETUP_X32: u32 = 0x4000_0000 | NR_IO_URING_SETUP;

const fn stmt(code: u32, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    }
}

const fn jump(code: u32, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    }
}

const LD_ABS: u32 = libc::BPF_LD | libc::BPF_W | libc::BPF_ABS;
const JEQ: u32 = libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K;
const RET: u32 = libc::BPF_RET | libc::BPF_K;

/// The classic-BPF program. Jump offsets count from the next instruction.
static FILTER: [libc::sock_filter; 7] = [
    /* 0 */ stmt(LD_ABS, OFFSET_ARCH),
    /* 1 */ jump(JEQ, AUDIT_ARCH_NATIVE, 0, 3), // foreign arch -> 5 (allow)
    /* 2 */ stmt(LD_ABS, OFFSET_NR),
    /* 3 */ jump(JEQ, NR_IO_URING_SETUP, 2, 0), // -> 6 (deny)
    /* 4 */ jump(JEQ, NR_IO_URING_SETUP_X32, 1, 0), // -> 6 (deny)
    /* 5 */ stmt(RET, libc::SECCOMP_RET_ALLOW),
    /* 6 */ stmt(RET, libc::SECCOMP_RET_ERRNO | libc::EPERM as u32),
];

/// Installs the filter. Only raw system calls on static data: safe to call between `fork` and
/// `exec` (async-signal-safe, no allocation).
fn install(flags: libc::c_ulong) -> io::Result<()> {
    let prog = libc::sock_fprog {
        len: FILTER.len() as libc::c_ushort,
        filter: FILTER.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: PR_SET_NO_NEW_PRIVS takes integer arguments only; it lets an unprivileged
    // process install a filter and is harmless for root.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `prog` points at a valid, static filter program for the duration of the call
    // (the kernel copies it).
    let rc = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            flags,
            &prog as *const libc::sock_fprog,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Makes `io_uring_setup` fail with `EPERM` in the whole current process (all threads, via
/// `SECCOMP_FILTER_FLAG_TSYNC`) and in every process it starts afterwards. Irreversible:
/// call it only in a child process made for the purpose.
#[doc(hidden)]
pub fn deny_io_uring_setup() -> io::Result<()> {
    install(libc::SECCOMP_FILTER_FLAG_TSYNC)
}

/// Arranges for the process `cmd` spawns to run with `io_uring_setup` denied (the filter is
/// installed between `fork` and `exec`, so the parent is unaffected).
#[doc(hidden)]
pub fn deny_io_uring_on_spawn(cmd: &mut Command) -> &mut Command {
    // SAFETY: the closure runs in the forked child before exec; `install` only makes
    // async-signal-safe system calls on static data and does not allocate.
    unsafe { cmd.pre_exec(|| install(0)) }
}
