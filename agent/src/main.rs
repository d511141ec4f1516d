//! The guest agent: `/init` (PID 1) of a ktstr VM, or one of its workers
//! when started with [`proto::WORKER_ARG`].

mod init;

use ktstr_agent::proto;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some(proto::WORKER_ARG) {
        init::worker::main(&args[2..]);
        return;
    }
    init::main();
}
