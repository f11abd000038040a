//! Running frames through the loaded program (BPF_PROG_TEST_RUN at either hook) and
//! checking them against a [`Case`].

use super::*;

const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;

/// The XDP action a TC action stands for; anything else is kept out of XDP's range.
fn tc_as_xdp(action: u32) -> u32 {
    match action {
        TC_ACT_OK => XDP_PASS,
        TC_ACT_SHOT => XDP_DROP,
        TC_ACT_REDIRECT => XDP_REDIRECT,
        other => 1000 + other,
    }
}

/// `struct __sk_buff` as BPF_PROG_TEST_RUN takes it in `ctx_in`: all zero but the devices
/// (`ingress_ifindex` at byte 36, `ifindex` at 40, which also picks the skb's device) and the
/// segmentation offload (`gso_segs` at 164, `gso_size` at 176), which the kernel copies into
/// the skb it builds.
fn sk_buff_ctx(ifindex: u32, gso: Option<Gso>) -> [u8; 192] {
    let mut b = [0; 192];
    b[36..40].copy_from_slice(&ifindex.to_ne_bytes());
    b[40..44].copy_from_slice(&ifindex.to_ne_bytes());
    if let Some(Gso { size, segs }) = gso {
        b[164..168].copy_from_slice(&segs.to_ne_bytes());
        b[176..180].copy_from_slice(&size.to_ne_bytes());
    }
    b
}

/// An skb that stands for several wire segments (TSO/GSO from a local sender, GRO): TC only.
#[derive(Clone, Copy, Debug)]
pub struct Gso {
    /// Payload bytes per segment.
    pub size: u32,
    pub segs: u32,
}

/// `struct xdp_md` as BPF_PROG_TEST_RUN takes it in `ctx_in`.
#[repr(C)]
#[derive(Default)]
struct XdpMd {
    data: u32,
    data_end: u32,
    data_meta: u32,
    ingress_ifindex: u32,
    rx_queue_index: u32,
    egress_ifindex: u32,
}

impl XdpMd {
    fn to_bytes(&self) -> [u8; 24] {
        let mut b = [0; 24];
        for (i, v) in [
            self.data,
            self.data_end,
            self.data_meta,
            self.ingress_ifindex,
            self.rx_queue_index,
            self.egress_ifindex,
        ]
        .iter()
        .enumerate()
        {
            b[i * 4..i * 4 + 4].copy_from_slice(&v.to_ne_bytes());
        }
        b
    }
}

/// What one test run returned.
#[derive(Debug)]
pub struct Run {
    pub action: u32,
    /// The frame as the program left it.
    pub out: Vec<u8>,
    /// Average time per repeat, as measured by the kernel.
    pub duration: Duration,
}

/// Where a test run says the frame came in.
#[derive(Clone, Copy, Debug)]
pub enum Ingress {
    /// The device the frame's source address lives behind (`Dataplane::wire_ingress`).
    Wire,
    /// No `ctx_in`: the kernel's default, the namespace's loopback.
    KernelDefault,
}

impl Dataplane {
    /// The device a frame arrives on: rha-srv for frames from the backend subnet, rha-cli for
    /// everything else.
    fn wire_ingress(&self, frame: &[u8]) -> u32 {
        if let Some(ifindex) = self.arrive_on.get() {
            return ifindex;
        }
        let from_backend_net =
            frame.len() >= 30 && frame[12..14] == [0x08, 0x00] && frame[26..29] == [198, 18, 1];
        if from_backend_net {
            self.srv_ifindex
        } else {
            self.cli_ifindex
        }
    }

    pub fn run(&self, frame: &[u8]) -> Run {
        self.run_with(frame, Ingress::Wire, 1)
    }

    /// Runs the program `repeat` times over one buffer (the kernel does not restore it
    /// between repeats).
    pub fn run_with(&self, frame: &[u8], ingress: Ingress, repeat: u32) -> Run {
        self.try_run(frame, ingress, repeat)
            .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN: {e}"))
    }

    /// One run of `frame` from the wire through the hook's program or (`egress`) the TC egress
    /// program. The kernel's refusal comes back as an error: a fuzzer's frame may be too short
    /// to run at all.
    pub fn try_run_once(&self, frame: &[u8], egress: bool) -> Result<Run, ProgramError> {
        self.try_run_prog(frame, Ingress::Wire, 1, None, egress)
    }

    fn try_run(&self, frame: &[u8], ingress: Ingress, repeat: u32) -> Result<Run, ProgramError> {
        self.try_run_gso(frame, ingress, repeat, None)
    }

    fn try_run_gso(
        &self,
        frame: &[u8],
        ingress: Ingress,
        repeat: u32,
        gso: Option<Gso>,
    ) -> Result<Run, ProgramError> {
        self.try_run_prog(frame, ingress, repeat, gso, false)
    }

    /// `egress`: the TC egress program instead of the hook's own.
    fn try_run_prog(
        &self,
        frame: &[u8],
        ingress: Ingress,
        repeat: u32,
        gso: Option<Gso>,
        egress: bool,
    ) -> Result<Run, ProgramError> {
        assert!(
            gso.is_none() || matches!(self.hook, Hook::Tc),
            "segmentation offload exists only at the TC hook"
        );
        let ingress_ifindex = self.wire_ingress(frame);
        let xdp_ctx;
        let tc_ctx;
        let ctx: &[u8] = match self.hook {
            _ if egress => {
                tc_ctx = sk_buff_ctx(ingress_ifindex, gso);
                &tc_ctx
            }
            Hook::Xdp => {
                xdp_ctx = XdpMd {
                    data: 0,
                    data_end: frame.len() as u32,
                    ingress_ifindex,
                    ..XdpMd::default()
                }
                .to_bytes();
                &xdp_ctx
            }
            Hook::Tc => {
                tc_ctx = sk_buff_ctx(ingress_ifindex, gso);
                &tc_ctx
            }
        };
        let mut data_out = vec![0u8; frame.len() + 256];
        let options = TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut data_out),
            ctx_in: matches!(ingress, Ingress::Wire).then_some(ctx),
            repeat,
            ..Default::default()
        };
        let (res, action): (TestRunResult, fn(u32) -> u32) = match self.hook {
            _ if egress => {
                let prog: &SchedClassifier = self
                    .bpf
                    .program("redis_ha_egress")
                    .expect("program redis_ha_egress")
                    .try_into()
                    .expect("TC classifier");
                (prog.test_run(options)?, tc_as_xdp)
            }
            Hook::Xdp => {
                let prog: &Xdp = self
                    .bpf
                    .program("redis_ha")
                    .expect("program redis_ha")
                    .try_into()
                    .expect("XDP program");
                (prog.test_run(options)?, |a| a)
            }
            Hook::Tc => {
                let prog: &SchedClassifier = self
                    .bpf
                    .program("redis_ha_tc")
                    .expect("program redis_ha_tc")
                    .try_into()
                    .expect("TC classifier");
                (prog.test_run(options)?, tc_as_xdp)
            }
        };
        data_out.truncate(res.data_size_out as usize);
        Ok(Run {
            action: action(res.return_value),
            out: data_out,
            duration: res.duration,
        })
    }

    /// The shortest frame the kernel test-runs at this hook: an Ethernet header at XDP; at TC
    /// also a whole IPv4 header when the EtherType says IPv4 (the skb test run checks it).
    /// [`Self::shortest_run`] for `frame`'s own EtherType: at TC the skb test run wants the
    /// whole network header of IPv6 (40 bytes) too.
    pub fn shortest_run_for(&self, frame: &[u8]) -> usize {
        let ipv6 = frame.len() >= ETH_LEN && frame[12..14] == [0x86, 0xdd];
        match self.hook {
            Hook::Tc if ipv6 => ETH_LEN + 40,
            Hook::Tc if frame.len() >= ETH_LEN && frame[12..14] != [0x08, 0x00] => ETH_LEN,
            _ => self.shortest_run(),
        }
    }

    fn shortest_run(&self) -> usize {
        match self.hook {
            Hook::Xdp => ETH_LEN,
            Hook::Tc => ETH_LEN + 20,
        }
    }

    /// Attaches the program in native mode to `dev`, a device that carries no traffic.
    ///
    /// BPF_PROG_TEST_RUN with repeat > 1 adds the program to the kernel's XDP dispatcher and
    /// removes it afterwards, each costing an RCU grace period (~18 ms per call measured
    /// here). While the program is attached natively somewhere the dispatcher already holds
    /// it, and a call costs microseconds; the program runs the same direct call either way.
    pub fn attach_idle(&mut self, dev: &str) {
        let prog: &mut Xdp = self
            .bpf
            .program_mut("redis_ha")
            .expect("program redis_ha")
            .try_into()
            .expect("XDP program");
        prog.attach(dev, XdpMode::Driver)
            .unwrap_or_else(|e| panic!("attach to {dev} in native mode: {e}"));
    }

    /// Runs `case` and checks action, output bytes and counters; `Err` describes every
    /// mismatch.
    /// `Ok(None)`: the kernel refused to run the frame at all, which it does (EINVAL) for
    /// frames shorter than an Ethernet header; such frames never reach the program.
    pub fn check(&self, case: &Case) -> Result<Option<Run>, String> {
        self.check_gso(case, None)
    }

    fn check_gso(&self, case: &Case, gso: Option<Gso>) -> Result<Option<Run>, String> {
        self.check_prog(case, gso, false)
    }

    fn check_prog(
        &self,
        case: &Case,
        gso: Option<Gso>,
        egress: bool,
    ) -> Result<Option<Run>, String> {
        let expected = case.expect.outputs(&case.frame)?;
        let before = self.counters();
        let run = match self.try_run_prog(&case.frame, Ingress::Wire, 1, gso, egress) {
            Ok(run) => run,
            Err(ProgramError::SyscallError(e))
                if case.frame.len() < self.shortest_run()
                    && e.io_error.raw_os_error() == Some(libc::EINVAL) =>
            {
                return Ok(None);
            }
            Err(e) => {
                let errno = match &e {
                    ProgramError::SyscallError(e) => e.io_error.raw_os_error(),
                    _ => None,
                };
                return Err(format!(
                    "case `{}` ({:?} hook, errno {errno:?}): BPF_PROG_TEST_RUN: {e}",
                    case.name, self.hook
                ));
            }
        };
        let after = self.counters();
        let mut errors = Vec::new();
        if run.action != case.action {
            errors.push(format!(
                "action: expected {}, got {}",
                action_name(case.action),
                action_name(run.action)
            ));
        }
        if !expected.is_empty() && !expected.contains(&run.out) {
            let detail: Vec<String> = expected.iter().map(|e| diff(e, &run.out)).collect();
            errors.push(format!(
                "output is not {:?}:\n{}",
                case.expect,
                detail.join("\n  -- or --\n")
            ));
        }
        let moved: Vec<String> = (0..counter::COUNT as usize)
            .filter(|&i| after[i] != before[i])
            .map(|i| {
                format!(
                    "{} +{}",
                    counter::NAMES[i],
                    after[i].wrapping_sub(before[i])
                )
            })
            .collect();
        let want = if case.counter == NO_COUNTER {
            Vec::new()
        } else {
            vec![format!("{} +1", counter::NAMES[case.counter as usize])]
        };
        if moved != want {
            errors.push(format!("counters: expected {want:?} only, got {moved:?}"));
        }
        if errors.is_empty() {
            Ok(Some(run))
        } else {
            Err(format!(
                "case `{}` ({:?} hook):\n  {}",
                case.name,
                self.hook,
                errors.join("\n  ")
            ))
        }
    }

    /// Runs one step of a scenario; later steps depend on it, so a failure stops the test.
    #[track_caller]
    pub fn step(&self, case: Case) -> Run {
        self.step_gso(case, None)
    }

    /// One run of `frame` as an skb carrying `gso` (TC only), arriving from the wire.
    #[track_caller]
    pub fn run_gso(&self, frame: &[u8], gso: Gso) -> Run {
        self.try_run_gso(frame, Ingress::Wire, 1, Some(gso))
            .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN: {e}"))
    }

    /// [`Self::step`] for an skb carrying `gso` (TC only).
    #[track_caller]
    pub fn step_gso(&self, case: Case, gso: Option<Gso>) -> Run {
        match self.check_gso(&case, gso) {
            Ok(Some(run)) => run,
            Ok(None) => panic!("case `{}`: the kernel refused to run the frame", case.name),
            Err(e) => panic!("{e}"),
        }
    }

    /// [`Self::step`] through the TC egress program (the replies of a local backend).
    #[track_caller]
    pub fn step_egress(&self, case: Case) -> Run {
        match self.check_prog(&case, None, true) {
            Ok(Some(run)) => run,
            Ok(None) => panic!("case `{}`: the kernel refused to run the frame", case.name),
            Err(e) => panic!("{e}"),
        }
    }

    /// Runs independent cases and reports every failure together.
    #[track_caller]
    pub fn table(&self, cases: &[Case]) {
        let mut failures = Vec::new();
        for c in cases {
            match self.check(c) {
                Ok(Some(_)) => {}
                Ok(None) => println!(
                    "note: case `{}` not run at the {:?} hook: the kernel refuses test runs of \
                     frames shorter than {} bytes there (EINVAL). At XDP no shorter frame \
                     reaches the program; at TC one can, and meets the same bounds checks as \
                     every other case",
                    c.name,
                    self.hook,
                    self.shortest_run()
                ),
                Err(e) => failures.push(e),
            }
        }
        assert!(
            failures.is_empty(),
            "{} of {} cases failed:\n{}",
            failures.len(),
            cases.len(),
            failures.join("\n")
        );
    }
}

/// [`Case::counter`] of a packet no counter may count (the egress program's passes).
pub const NO_COUNTER: u32 = u32::MAX;

/// One row of a table: a frame, what the program must return, what the frame must look like
/// afterwards, and which counter (alone) must move by one.
pub struct Case {
    pub name: &'static str,
    pub frame: Vec<u8>,
    pub action: u32,
    pub expect: Expect,
    pub counter: u32,
}

/// What the output frame must be, derived from the input frame.
#[derive(Clone, Copy, Debug)]
pub enum Expect {
    /// Byte for byte the input.
    Unchanged,
    /// Client → backend: destination replaced by `backend`, TTL − 1, MACs from the FIB
    /// (neighbour entry of the backend, MAC of the device toward it); all else unchanged.
    ToBackend(SocketAddrV4),
    /// Backend → client: source replaced by `vip`, TTL − 1, MACs from the FIB.
    ToClient(SocketAddrV4),
    /// Destination replaced by `backend`, but handed to the kernel: TTL and MACs untouched.
    RewrittenOnly(SocketAddrV4),
    /// Full NAT: both endpoints replaced, forwarded toward `dst` (TTL − 1, MACs from the FIB).
    Translated {
        src: SocketAddrV4,
        dst: SocketAddrV4,
    },
    /// Source replaced by `src`, nothing else (a local backend's reply at TC egress, which
    /// the kernel has routed already).
    SourceOnly(SocketAddrV4),
    /// A bare RST+ACK from the segment's destination back to its sender (RFC 793 reset
    /// generation), MACs swapped, so the client fails fast.
    Reset,
    /// [`Expect::ToBackend`] for one of these backends (the read port's pick).
    ToOneOf(&'static [SocketAddrV4]),
    /// Not checked: the frame is dropped.
    Dropped,
}

impl Expect {
    /// The frames the program may leave (one, except for [`Expect::ToOneOf`]), each built
    /// from the input's fields with this module's own checksum code; empty when the output
    /// does not matter.
    pub fn outputs(&self, input: &[u8]) -> Result<Vec<Vec<u8>>, String> {
        match *self {
            Expect::Unchanged => return Ok(vec![input.to_vec()]),
            Expect::Dropped => return Ok(Vec::new()),
            Expect::ToOneOf(backends) => {
                return backends
                    .iter()
                    .map(|&b| Expect::ToBackend(b).outputs(input).map(|mut v| v.remove(0)))
                    .collect();
            }
            _ => {}
        }
        let mut f = Tcp4::parse(input).ok_or("expectation needs a well-formed TCP/IPv4 input")?;
        if f.build() != input {
            return Err("test bug: input frame has a bad checksum".into());
        }
        let forwarded = |f: &mut Tcp4, toward: SocketAddrV4| {
            f.ttl -= 1;
            f.eth_dst = neighbour_mac(*toward.ip());
            f.eth_src = device_mac(*toward.ip());
        };
        match *self {
            Expect::ToBackend(backend) => {
                f.dst = backend;
                forwarded(&mut f, backend);
            }
            Expect::ToClient(vip) => {
                f.src = vip;
                let client = f.dst;
                forwarded(&mut f, client);
            }
            Expect::RewrittenOnly(backend) => f.dst = backend,
            Expect::Translated { src, dst } => {
                f.src = src;
                f.dst = dst;
                forwarded(&mut f, dst);
            }
            Expect::SourceOnly(src) => f.src = src,
            Expect::Reset => {
                let syn_fin = u32::from(f.flags & tcp_flags::SYN != 0)
                    + u32::from(f.flags & tcp_flags::FIN != 0);
                let seg_len = f.payload.len() as u32 + syn_fin;
                f = Tcp4 {
                    eth_dst: f.eth_src,
                    eth_src: f.eth_dst,
                    tos: f.tos,
                    id: 0,
                    frag: crate::frame::IP_DF,
                    ttl: 64,
                    ip_options: Vec::new(),
                    src: f.dst,
                    dst: f.src,
                    seq: if f.flags & tcp_flags::ACK != 0 {
                        f.ack
                    } else {
                        0
                    },
                    ack: f.seq.wrapping_add(seg_len),
                    flags: tcp_flags::RST | tcp_flags::ACK,
                    window: 0,
                    urg: 0,
                    tcp_options: Vec::new(),
                    payload: Vec::new(),
                    trailer: Vec::new(),
                };
            }
            Expect::Unchanged | Expect::Dropped | Expect::ToOneOf(_) => unreachable!(),
        }
        Ok(vec![f.build()])
    }
}
