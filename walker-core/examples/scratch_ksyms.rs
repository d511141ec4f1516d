fn main() {
    let p = std::env::args().nth(1).unwrap();
    let t = std::time::Instant::now();
    let v = ktstr_walker::kernel::vmlinux::Vmlinux::open(&p).unwrap();
    println!("{:?} in {:?}", v.link_symbols_from(), t.elapsed());
    let k = v.kallsyms().unwrap();
    println!(
        "{} syms {:x?} enc {:x?}",
        k.len(),
        k.locations(),
        k.encoding()
    );
    println!("{:#x?}", v.link_symbols());
    println!("{}", String::from_utf8_lossy(v.banner()));
}
