//! The `ktstr` command line.

fn main() {
    eprintln!("ktstr: no commands yet");
    std::process::exit(2);
}
