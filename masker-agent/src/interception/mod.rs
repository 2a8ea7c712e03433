//! eBPF interception: loading and attaching the programs, the target and tag
//! maps, and the original destination of each redirected connection.
