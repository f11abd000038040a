fn main() -> anyhow::Result<()> {
    let mut bpf = aya::Ebpf::load(redis_ha_ctl::ebpf_object())?;
    for (name, _) in bpf.maps() {
        println!("map {name}");
    }
    let prog: &mut aya::programs::Xdp = bpf.program_mut("redis_ha").unwrap().try_into()?;
    prog.load()?;
    println!("loaded");
    Ok(())
}
