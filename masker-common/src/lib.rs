//! Types that cross the kernel boundary between masker's eBPF programs
//! (`masker-ebpf`) and the agent (`masker-agent`). Every type here is
//! `#[repr(C)]` with explicit padding so both sides agree on its layout.
#![no_std]
#![forbid(unsafe_code)]
