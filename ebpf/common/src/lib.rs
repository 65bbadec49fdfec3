//! Map keys and values shared by the eBPF programs (`ebpf/programs`) and the agent.
//! Everything here is `#[repr(C)]`, `Copy`, explicitly padded, and size-asserted.
#![no_std]
