//! Cortex-M4 firmware: replaced-token detection with a DeBERTa-v3 discriminator embedded in
//! flash, without a heap.
//!
//! The model file is `include_bytes!`-ed at a 16-byte boundary and parsed in place; a static
//! arena holds every activation. For a few fixed token sequences the firmware prints, over
//! semihosting, the ids, one logit per token and the SysTick ticks the inference took (25 MHz
//! core clock on `mps2-an386`; under QEMU `-icount shift=0` one tick is 40 guest
//! instructions, which a calibration loop of known length confirms), then exits through
//! semihosting. No global allocator exists: the crate and
//! everything it links are `no_std` without `alloc`, so any use of the heap would fail to
//! link.
#![no_std]
#![no_main]

use core::fmt::Write;
use core::sync::atomic::{AtomicU32, Ordering};

use cortex_m::peripheral::SYST;
use cortex_m::peripheral::syst::SystClkSource;
use cortex_m_rt::{entry, exception};
use cortex_m_semihosting::{debug, hio};
use deberta_core::edge::{EdgeError, EdgeModel, arena_bytes, detect};

/// Bytes stored at a 16-byte boundary.
#[repr(C, align(16))]
struct Aligned<T: ?Sized>(T);

/// The edge model, in flash.
static MODEL: &Aligned<[u8]> = &Aligned(*include_bytes!(concat!(env!("OUT_DIR"), "/model.dbt")));

/// Scratch memory of one inference: enough for 128 tokens of the `nano` preset's int8
/// discriminator (163,355 bytes with its 64 position buckets; `deberta export --format edge`
/// prints the figure).
const ARENA_BYTES: usize = 160 * 1024;

/// Lengths of the sequences that are run.
const SEQUENCES: [usize; 3] = [8, 64, 128];

/// Longest of [`SEQUENCES`].
const MAX_TOKENS: usize = 128;

/// Iterations of the calibration loop.
const CALIBRATION_ITERATIONS: u32 = 10_000_000;

/// SysTick reload value: the 24-bit counter's full range.
const RELOAD: u32 = 0x00FF_FFFF;

/// SysTick wrap-arounds since the clock started.
static WRAPS: AtomicU32 = AtomicU32::new(0);

#[exception]
fn SysTick() {
    WRAPS.fetch_add(1, Ordering::Relaxed);
}

/// Core-clock ticks since [`start_clock`].
fn ticks() -> u64 {
    loop {
        let wraps = WRAPS.load(Ordering::Relaxed);
        let current = SYST::get_current();
        if WRAPS.load(Ordering::Relaxed) == wraps {
            return u64::from(wraps) * (u64::from(RELOAD) + 1) + u64::from(RELOAD - current);
        }
    }
}

fn start_clock(syst: &mut SYST) {
    syst.set_clock_source(SystClkSource::Core);
    syst.set_reload(RELOAD);
    syst.clear_current();
    syst.enable_interrupt();
    syst.enable_counter();
}

/// Token `i` of every test sequence: a fixed pseudo-random id in `1..vocab`.
fn token(i: usize, vocab: usize) -> u32 {
    let mixed = (i as u32 + 1).wrapping_mul(2_654_435_761) >> 8;
    1 + mixed % (vocab as u32 - 1)
}

/// Semihosting output failed; nothing can be reported.
struct NoOutput;

impl From<core::fmt::Error> for NoOutput {
    fn from(_: core::fmt::Error) -> Self {
        NoOutput
    }
}

fn run(out: &mut hio::HostStream, arena: &mut [u8]) -> Result<Result<(), EdgeError>, NoOutput> {
    let model = match EdgeModel::parse(&MODEL.0) {
        Ok(model) => model,
        Err(e) => return Ok(Err(e)),
    };
    let cfg = model.config();
    writeln!(
        out,
        "model {} bytes, {} weights, hidden {}, layers {}, heads {}, ffn {}, vocab {}, max_seq_len {}",
        MODEL.0.len(),
        model.dtype().name(),
        cfg.hidden_size,
        cfg.num_hidden_layers,
        cfg.num_attention_heads,
        cfg.intermediate_size,
        cfg.vocab_size,
        model.max_seq_len()
    )?;
    // cortex-m 0.7.10's `delay(n)` runs n + 1 iterations of a two-instruction loop (`subs`,
    // `bne`): the ticks it takes convert ticks to guest instructions under QEMU's `-icount`.
    let start = ticks();
    cortex_m::asm::delay(CALIBRATION_ITERATIONS);
    let elapsed = ticks() - start;
    let instructions = 2 * (u64::from(CALIBRATION_ITERATIONS) + 1);
    writeln!(out, "calibration {instructions} {elapsed}")?;
    for len in [64, 128] {
        match arena_bytes(&model, len) {
            Ok(bytes) => writeln!(out, "arena_bytes {len} {bytes}")?,
            Err(e) => writeln!(out, "arena_bytes {len} unavailable: {e}")?,
        }
    }
    let mut ids = [0u32; MAX_TOKENS];
    for (i, id) in ids.iter_mut().enumerate() {
        *id = token(i, cfg.vocab_size);
    }
    let mut logits = [0.0f32; MAX_TOKENS];
    for len in SEQUENCES {
        let len = len.min(model.max_seq_len());
        let ids = &ids[..len];
        let start = ticks();
        if let Err(e) = detect(&model, ids, arena, &mut logits) {
            return Ok(Err(e));
        }
        let elapsed = ticks() - start;
        write!(out, "ids")?;
        for id in ids {
            write!(out, " {id}")?;
        }
        write!(out, "\nlogits")?;
        for logit in &logits[..len] {
            write!(out, " {logit:.7}")?;
        }
        writeln!(out, "\nticks {len} {elapsed}")?;
    }
    Ok(Ok(()))
}

#[entry]
fn main() -> ! {
    // cortex-m-rt turns this into a `&'static mut` that only `main` can reach.
    static mut ARENA: Aligned<[u8; ARENA_BYTES]> = Aligned([0; ARENA_BYTES]);
    let status = match (cortex_m::Peripherals::take(), hio::hstdout()) {
        (Some(mut peripherals), Ok(mut out)) => {
            start_clock(&mut peripherals.SYST);
            match run(&mut out, &mut ARENA.0) {
                Ok(Ok(())) => debug::EXIT_SUCCESS,
                Ok(Err(e)) => {
                    let _ = writeln!(out, "error: {e}");
                    debug::EXIT_FAILURE
                }
                Err(NoOutput) => debug::EXIT_FAILURE,
            }
        }
        _ => debug::EXIT_FAILURE,
    };
    debug::exit(status);
    #[allow(clippy::empty_loop)]
    loop {}
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    if let Ok(mut out) = hio::hstdout() {
        let _ = writeln!(out, "panic: {info}");
    }
    debug::exit(debug::EXIT_FAILURE);
    #[allow(clippy::empty_loop)]
    loop {}
}
