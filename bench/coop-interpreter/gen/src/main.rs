//! Writes the SPIR-V of the cooperative-matrix matmul (`matmul_cooperative`) as naga 30 writes
//! it for wgpu's Vulkan backend: `coop-spirv KERNEL.wgsl COMMON.wgsl OUT.spv` (the kernel file
//! followed by matmul_common.wgsl, as `Shader::MatmulCooperative` joins them), with debug names
//! so that the interpreter's input can name the bindings and the `Params` fields.

use naga::back::spv;
use naga::valid::{Capabilities, ValidationFlags, Validator};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, kernel, common, out] = args.as_slice() else {
        eprintln!("usage: coop-spirv KERNEL.wgsl COMMON.wgsl OUT.spv");
        std::process::exit(2);
    };
    let read = |path: &str| {
        std::fs::read_to_string(path).unwrap_or_else(|e| {
            eprintln!("{path}: {e}");
            std::process::exit(1)
        })
    };
    let source = format!("{}{}", read(kernel), read(common));
    let module = naga::front::wgsl::parse_str(&source).unwrap_or_else(|e| {
        eprintln!("{}", e.emit_to_string(&source));
        std::process::exit(1)
    });
    let capabilities = Capabilities::SHADER_FLOAT16 | Capabilities::COOPERATIVE_MATRIX;
    let info = Validator::new(ValidationFlags::all(), capabilities)
        .validate(&module)
        .unwrap_or_else(|e| {
            eprintln!("{}", e.emit_to_string(&source));
            std::process::exit(1)
        });
    let options = spv::Options {
        lang_version: (1, 3),
        force_loop_bounding: false,
        flags: spv::Options::default().flags | spv::WriterFlags::DEBUG,
        ..spv::Options::default()
    };
    let pipeline = spv::PipelineOptions {
        shader_stage: naga::ShaderStage::Compute,
        entry_point: "matmul_cooperative".into(),
    };
    let words = spv::write_vec(&module, &info, &options, Some(&pipeline)).unwrap_or_else(|e| {
        eprintln!("SPIR-V: {e}");
        std::process::exit(1)
    });
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    if let Err(e) = std::fs::write(out, bytes) {
        eprintln!("{out}: {e}");
        std::process::exit(1);
    }
}
