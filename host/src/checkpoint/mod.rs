//! Reading and writing tensor files: safetensors and PyTorch `pytorch_model.bin`.

mod safetensors_file;
mod torch_bin;

use std::collections::BTreeMap;
use std::path::Path;

pub use safetensors_file::{
    parse_safetensors, read_safetensors, write_safetensors, write_safetensors_with_metadata,
};
pub use torch_bin::{parse_torch_bin, read_torch_bin};

use crate::error::Result;
use crate::tensor::HostTensor;

/// Named tensors of one file, in name order.
pub type TensorMap = BTreeMap<String, HostTensor>;

/// Reads a tensor file, choosing the format from its first bytes: a zip archive (`PK\x03\x04`)
/// is a PyTorch checkpoint, anything else is parsed as safetensors.
pub fn read_tensor_file(path: &Path) -> Result<TensorMap> {
    let mut magic = [0u8; 4];
    let head = {
        use std::io::Read;
        let mut file = std::fs::File::open(path).map_err(|e| crate::Error::io(path, e))?;
        let n = file
            .read(&mut magic)
            .map_err(|e| crate::Error::io(path, e))?;
        &magic[..n]
    };
    if head == b"PK\x03\x04" {
        read_torch_bin(path)
    } else {
        read_safetensors(path)
    }
}
