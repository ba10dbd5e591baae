//! Any bytes as an MQTT command from the centre, under each command name: the node's parsing
//! must answer Ok or an error text, never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use riac_node::uplink::commands::parse_for_fuzzing;

fuzz_target!(|data: &[u8]| {
    for name in ["thresholds", "image-request", "library-add", "other"] {
        let _ = parse_for_fuzzing(name, data);
    }
});
