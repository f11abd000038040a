#![no_std]
// A lib target lets redis-ha-ctl declare this crate as a build dependency, so cargo
// rebuilds the controller (which embeds the program) when the program changes.
