//! The run-state loader of `deberta pretrain --resume`: `parse_run_state` (what `load_state`
//! reads from `state/state.json`) on arbitrary bytes, then what a resume does with an accepted
//! state: the data cursor, the options' validation, and the model configurations they give.
#![no_main]

use std::path::Path;

use deberta_host::data::DataCursor;
use deberta_host::pretrain::checkpoint::parse_run_state;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(state) = parse_run_state(Path::new("state/state.json"), data) else {
        return;
    };
    let _ = serde_json::from_value::<DataCursor>(state.cursor.clone());
    let options = &state.options;
    if options.validate().is_ok() {
        let _ = options.model_configs(options.vocab_size, 0);
    }
    let _ = options.incompatible_change(options);
});
