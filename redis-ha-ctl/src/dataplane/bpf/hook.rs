//! The kernel hook the program runs at, XDP or TC ingress (which one a configuration gets is
//! `placement`'s), and the program at that hook, either just loaded from the embedded object
//! or reopened from its pin, with the ways to pin, attach and swap it into a link. One program
//! body serves both hooks; exactly one of the two programs is pinned.

use std::path::Path;

use aya::programs::{
    LinkOrder, SchedClassifier, TcAttachType, Xdp, XdpMode as AyaXdpMode,
    links::FdLink,
    tc::{SchedClassifierLink, TcAttachOptions},
    xdp::XdpLink,
};

use super::{
    BpfError,
    placement::{Placement, XdpLinks},
};

const PROG_PIN: &str = "prog";
/// The same program built for the TC ingress hook (`xdp_mode = "tc"`); one of the two is
/// pinned, never both.
const PROG_TC_PIN: &str = "prog_tc";

/// The kernel hook the program runs at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Hook {
    Xdp,
    Tc,
}

impl Hook {
    /// The hook of the data plane pinned at `pin_dir`, if any.
    pub(super) fn pinned(pin_dir: &Path) -> Option<Self> {
        [Self::Xdp, Self::Tc]
            .into_iter()
            .find(|h| pin_dir.join(h.pin()).exists())
    }

    /// The program's pin name under the pin directory.
    pub(super) fn pin(self) -> &'static str {
        match self {
            Self::Xdp => PROG_PIN,
            Self::Tc => PROG_TC_PIN,
        }
    }

    pub(super) fn name(self) -> &'static str {
        match self {
            Self::Xdp => "XDP",
            Self::Tc => "TC ingress",
        }
    }
}

pub(super) fn attach_err(
    iface: &str,
    mode: &'static str,
    e: impl std::error::Error + Send + Sync + 'static,
) -> BpfError {
    BpfError::Attach {
        iface: iface.to_owned(),
        mode,
        source: Box::new(e),
    }
}

/// The pinned program, ready to attach.
pub(super) enum Pinned {
    Xdp(Xdp),
    Tc(SchedClassifier),
}

impl Pinned {
    pub(super) fn open(hook: Hook, path: &Path) -> Result<Self, BpfError> {
        let load_err = |e| BpfError::Load(Box::new(e));
        Ok(match hook {
            Hook::Xdp => Self::Xdp(
                Xdp::from_pin(path, aya_obj::programs::XdpAttachType::Interface)
                    .map_err(load_err)?,
            ),
            Hook::Tc => Self::Tc(SchedClassifier::from_pin(path).map_err(load_err)?),
        })
    }

    pub(super) fn id(&self) -> Result<u32, aya::programs::ProgramError> {
        match self {
            Self::Xdp(p) => p.info().map(|i| i.id()),
            Self::Tc(p) => p.info().map(|i| i.id()),
        }
    }

    /// Attaches to `iface` as `placement` says and returns the link, to be pinned, and the
    /// mode it got.
    pub(super) fn attach(
        &mut self,
        iface: &str,
        placement: Placement,
    ) -> Result<(FdLink, &'static str), BpfError> {
        match (self, placement) {
            (Self::Xdp(_), Placement::Tc) | (Self::Tc(_), Placement::Xdp(_)) => {
                unreachable!("the program is opened for the placement's hook")
            }
            (Self::Xdp(prog), Placement::Xdp(links)) => {
                let (id, mode) = attach_xdp(prog, iface, links)?;
                let link = prog.take_link(id).map_err(|e| attach_err(iface, mode, e))?;
                let link = FdLink::try_from(link).map_err(|e| attach_err(iface, mode, e))?;
                Ok((link, mode))
            }
            (Self::Tc(prog), Placement::Tc) => {
                // TCX (kernel 6.6+): a link like XDP's, so it pins and upgrades the same way,
                // and no qdisc is needed.
                let id = prog
                    .attach_with_options(
                        iface,
                        TcAttachType::Ingress,
                        TcAttachOptions::TcxOrder(LinkOrder::default()),
                    )
                    .map_err(|e| attach_err(iface, "tc", e))?;
                let link = prog.take_link(id).map_err(|e| attach_err(iface, "tc", e))?;
                let link = FdLink::try_from(link).map_err(|e| attach_err(iface, "tc", e))?;
                Ok((link, "tc"))
            }
        }
    }
}

/// A program just loaded from the embedded object (not pinned yet).
pub(super) enum Loaded<'a> {
    Xdp(&'a mut Xdp),
    Tc(&'a mut SchedClassifier),
}

impl<'a> Loaded<'a> {
    /// The object's program for `hook`, through the verifier.
    pub(super) fn verified(hook: Hook, ebpf: &'a mut aya::Ebpf) -> Result<Self, BpfError> {
        Ok(match hook {
            Hook::Xdp => Self::Xdp(loaded_program(ebpf)?),
            Hook::Tc => Self::Tc(loaded_tc_program(ebpf)?),
        })
    }

    pub(super) fn id(&self) -> Result<u32, aya::programs::ProgramError> {
        match self {
            Self::Xdp(p) => p.info().map(|i| i.id()),
            Self::Tc(p) => p.info().map(|i| i.id()),
        }
    }

    pub(super) fn pin(&mut self, path: &Path) -> Result<(), aya::pin::PinError> {
        match self {
            Self::Xdp(p) => p.pin(path),
            Self::Tc(p) => p.pin(path),
        }
    }

    /// Swaps this program into the pinned link of `iface` (BPF_LINK_UPDATE).
    pub(super) fn replace_in(&mut self, iface: &str, link: FdLink) -> Result<(), BpfError> {
        match self {
            Self::Xdp(prog) => {
                let link = XdpLink::try_from(link).map_err(|e| attach_err(iface, "pinned", e))?;
                let id = prog
                    .attach_to_link(link)
                    .map_err(|e| attach_err(iface, "pinned", e))?;
                drop(prog.take_link(id));
            }
            Self::Tc(prog) => {
                let link = SchedClassifierLink::try_from(link)
                    .map_err(|e| attach_err(iface, "pinned", e))?;
                let id = prog
                    .attach_to_link(link)
                    .map_err(|e| attach_err(iface, "pinned", e))?;
                drop(prog.take_link(id));
            }
        }
        Ok(())
    }
}

fn attach_xdp(
    prog: &mut Xdp,
    iface: &str,
    links: XdpLinks,
) -> Result<(aya::programs::xdp::XdpLinkId, &'static str), BpfError> {
    match links {
        XdpLinks::Native => prog
            .attach(iface, AyaXdpMode::Driver)
            .map(|id| (id, "native"))
            .map_err(|e| attach_err(iface, "native", e)),
        XdpLinks::Skb => prog
            .attach(iface, AyaXdpMode::Skb)
            .map(|id| (id, "skb"))
            .map_err(|e| attach_err(iface, "skb", e)),
        XdpLinks::NativeElseSkb => match prog.attach(iface, AyaXdpMode::Driver) {
            Ok(id) => Ok((id, "native")),
            Err(_) => prog
                .attach(iface, AyaXdpMode::Skb)
                .map(|id| (id, "skb"))
                .map_err(|e| attach_err(iface, "skb", e)),
        },
    }
}

/// The object's XDP program, through the verifier.
fn loaded_program(ebpf: &mut aya::Ebpf) -> Result<&mut Xdp, BpfError> {
    let prog: &mut Xdp = ebpf
        .program_mut("redis_ha")
        .ok_or_else(|| BpfError::Load("program redis_ha missing from the object".into()))?
        .try_into()
        .map_err(|e| BpfError::Load(Box::new(e)))?;
    prog.load().map_err(|e| BpfError::Load(Box::new(e)))?;
    Ok(prog)
}

/// The object's TC ingress program, through the verifier.
fn loaded_tc_program(ebpf: &mut aya::Ebpf) -> Result<&mut SchedClassifier, BpfError> {
    let prog: &mut SchedClassifier = ebpf
        .program_mut("redis_ha_tc")
        .ok_or_else(|| BpfError::Load("program redis_ha_tc missing from the object".into()))?
        .try_into()
        .map_err(|e| BpfError::Load(Box::new(e)))?;
    prog.load().map_err(|e| BpfError::Load(Box::new(e)))?;
    Ok(prog)
}
