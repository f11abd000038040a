//! The program's second part, at TC egress: where a backend is this node's own redis-server,
//! that server's replies to connections delivered through a VIP port leave with the VIP port
//! as their source. Attached (TCX egress) to every data-plane interface of a node that has a
//! local backend, pinned as `prog_egress` with one `egress_<interface>` link each, and
//! detached from a node that has none, since every packet the host sends pays for it.

use std::path::Path;

use aya::programs::{
    LinkOrder, SchedClassifier, TcAttachType,
    links::{FdLink, PinnedLink},
    tc::{SchedClassifierLink, TcAttachOptions},
};

use super::{
    BpfError,
    hook::attach_err,
    lifecycle::{detach, pinned_links},
};

const PROG_PIN: &str = "prog_egress";
const LINK_PREFIX: &str = "egress_";
const PROGRAM: &str = "redis_ha_egress";

/// The object's egress program, through the verifier.
fn verified(ebpf: &mut aya::Ebpf) -> Result<&mut SchedClassifier, BpfError> {
    let prog: &mut SchedClassifier = ebpf
        .program_mut(PROGRAM)
        .ok_or_else(|| BpfError::Load(format!("program {PROGRAM} missing from the object").into()))?
        .try_into()
        .map_err(|e| BpfError::Load(Box::new(e)))?;
    prog.load().map_err(|e| BpfError::Load(Box::new(e)))?;
    Ok(prog)
}

/// Makes the egress program sit on exactly `interfaces` (none: unpinned). `ebpf`: the object
/// just loaded on the pinned maps, if this run loaded one; otherwise it is loaded when the
/// program is not pinned yet.
pub(super) fn set_attached(
    pin_dir: &Path,
    interfaces: &[String],
    ebpf: Option<&mut aya::Ebpf>,
    load: impl FnOnce() -> Result<aya::Ebpf, BpfError>,
) -> Result<(), BpfError> {
    for (iface, path) in pinned_links(pin_dir, LINK_PREFIX)? {
        if !interfaces.contains(&iface) {
            detach(&path)?;
        }
    }
    let prog_pin = pin_dir.join(PROG_PIN);
    if interfaces.is_empty() {
        if prog_pin.exists() {
            unpin_file(&prog_pin)?;
        }
        return Ok(());
    }
    if !prog_pin.exists() {
        let mut own;
        let ebpf = match ebpf {
            Some(e) => e,
            None => {
                own = load()?;
                &mut own
            }
        };
        verified(ebpf)?
            .pin(&prog_pin)
            .map_err(|e| BpfError::Load(Box::new(e)))?;
    }
    let mut prog = SchedClassifier::from_pin(&prog_pin).map_err(|e| BpfError::Load(Box::new(e)))?;
    for iface in interfaces {
        let link_pin = pin_dir.join(format!("{LINK_PREFIX}{iface}"));
        if link_pin.exists() {
            continue;
        }
        let id = prog
            .attach_with_options(
                iface,
                TcAttachType::Egress,
                TcAttachOptions::TcxOrder(LinkOrder::default()),
            )
            .map_err(|e| attach_err(iface, "tc egress", e))?;
        let link = prog
            .take_link(id)
            .map_err(|e| attach_err(iface, "tc egress", e))?;
        FdLink::try_from(link)
            .map_err(|e| attach_err(iface, "tc egress", e))?
            .pin(&link_pin)
            .map_err(|e| attach_err(iface, "tc egress", e))?;
    }
    Ok(())
}

/// Swaps the egress program of `ebpf` (a new version) into every pinned egress link.
pub(super) fn upgrade(pin_dir: &Path, ebpf: &mut aya::Ebpf) -> Result<(), BpfError> {
    let links = pinned_links(pin_dir, LINK_PREFIX)?;
    if links.is_empty() {
        return Ok(());
    }
    let prog = verified(ebpf)?;
    for (iface, path) in links {
        let pinned = PinnedLink::from_pin(&path).map_err(|e| attach_err(&iface, "pinned", e))?;
        let link = SchedClassifierLink::try_from(FdLink::from(pinned))
            .map_err(|e| attach_err(&iface, "pinned", e))?;
        let id = prog
            .attach_to_link(link)
            .map_err(|e| attach_err(&iface, "pinned", e))?;
        drop(prog.take_link(id));
    }
    let prog_pin = pin_dir.join(PROG_PIN);
    unpin_file(&prog_pin)?;
    prog.pin(&prog_pin).map_err(|e| BpfError::Load(Box::new(e)))
}

/// Detaches from every interface (for `unload`); returns their names.
pub(super) fn detach_all(pin_dir: &Path) -> Result<Vec<String>, BpfError> {
    let mut detached = Vec::new();
    for (iface, path) in pinned_links(pin_dir, LINK_PREFIX)? {
        detach(&path)?;
        detached.push(iface);
    }
    Ok(detached)
}

fn unpin_file(path: &Path) -> Result<(), BpfError> {
    std::fs::remove_file(path).map_err(|source| BpfError::Io {
        what: "unpinning",
        path: path.to_owned(),
        source,
    })
}
