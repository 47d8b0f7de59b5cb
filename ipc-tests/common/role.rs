//! What a child role uses: its arguments (fields, serialized handles in hex), its way of talking back to
//! the parent's [`super::Kid`], and waiting for the parent.

use std::io::Write;
use std::time::Duration;

use mproc::Event;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Prints a line for the parent in one `write` (stdout is a pipe: a line written is a line the parent
/// reads, even if we are killed right after).
pub fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    out.write_all(format!("{line}\n").as_bytes())
        .expect("write to parent");
    out.flush().expect("flush to parent");
}

/// Splits a role argument into `N` fields separated by `sep` (our names contain neither `,` nor ` `).
#[track_caller]
pub fn fields<const N: usize>(arg: &str, sep: char) -> [&str; N] {
    let v: Vec<&str> = arg.split(sep).collect();
    v.try_into()
        .unwrap_or_else(|v: Vec<&str>| panic!("expected {N} fields, got {}: {v:?}", v.len()))
}

/// `v` (an object's handle) serialized with postcard, in hex: a role argument.
pub fn handle_to_hex<T: Serialize>(v: &T) -> String {
    let bytes = postcard::to_allocvec(v).expect("serialize a handle");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The object whose handle [`handle_to_hex`] wrote.
#[track_caller]
pub fn handle_from_hex<T: DeserializeOwned>(hex: &str) -> postcard::Result<T> {
    assert!(hex.len().is_multiple_of(2), "odd-length hex");
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex digit"))
        .collect();
    postcard::from_bytes(&bytes)
}

/// Waits (bounded) until the parent sets the start event `event`.
#[track_caller]
pub fn wait_for_start(event: &str, bound: Duration) {
    let go = Event::open(event).expect("open start event");
    assert!(go.wait_timeout(bound), "start signal did not come");
}

/// For a role that is done and waits to be killed.
pub fn sleep_forever() -> ! {
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
