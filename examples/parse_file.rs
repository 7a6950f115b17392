//! Prints how yihaotong's message facade judges each file given: for checking
//! conformance corpora by hand (`cargo run --example parse_file -- FILES`).
fn main() {
    for path in std::env::args().skip(1) {
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) => {
                println!("{path}: {e}");
                continue;
            }
        };
        match yihaotong::sip::message::parse(&bytes) {
            Ok(yihaotong::sip::message::Message::Request(r)) => {
                println!("{path}: request {} {}", r.method, r.uri)
            }
            Ok(yihaotong::sip::message::Message::Response(r)) => {
                println!("{path}: response {}", r.status)
            }
            Err(e) => println!(
                "{path}: refused {:?} {} (echo: {})",
                e.status,
                e.reason,
                e.echo.is_some()
            ),
        }
    }
}
