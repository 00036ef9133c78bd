//! PyTorch checkpoints written by `torch.save(state_dict)` in the zip format (the format of the
//! official `microsoft/deberta-v3-*` `pytorch_model.bin`), read in pure Rust.
//!
//! Such a file is a zip archive whose entries share one top-level folder (`archive/`,
//! `pytorch_model/`, …): `<prefix>/data.pkl` is a pickle describing the state dict, each
//! `<prefix>/data/<key>` holds the raw little-endian bytes of one storage, and
//! `<prefix>/byteorder` (optional) says `little`.
//!
//! Nothing in the pickle is ever executed. A small stack machine understands the opcodes that
//! `torch.save` emits (protocol 2, plus the protocol 3–5 opcodes a newer pickler may use) and
//! accepts only the handful of globals a state dict needs; every tensor becomes a description
//! (storage, offset, shape, strides) that is validated against the storage and the archive
//! before any element is read. Any malformed input is an error, never a panic, and no
//! allocation is sized from a number in the file before that number is checked against the
//! bytes actually present.
//!
//! The file is organised as: the pickle machine, then the torch reconstruction, then the zip
//! reading.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufReader, Read, Seek};
use std::path::Path;
use std::rc::Rc;

use deberta_core::dtype::{FloatType, decode_le};
use zip::result::ZipError;
use zip::{CompressionMethod, ZipArchive};

use super::TensorMap;
use crate::error::{Error, Result};
use crate::tensor::{HostTensor, TensorData};

/// Largest `data.pkl` accepted (real state dicts need a few hundred bytes per tensor).
const MAX_PICKLE_BYTES: u64 = 64 << 20;
/// Deepest nesting of tuples, lists and dicts (a state dict needs about 4).
const MAX_DEPTH: usize = 64;
/// Most values on the pickle stack at once.
const MAX_STACK: usize = 1 << 20;
/// Most open MARKs at once.
const MAX_MARKS: usize = 1 << 16;
/// Most memo entries.
const MAX_MEMO: usize = 1 << 20;
/// Most container elements copied when a shared (memoised) list or dict is modified.
const MAX_COPY_WORK: usize = 1 << 24;
/// Largest uncompressed/compressed ratio deflate can reach (plus slack below).
const DEFLATE_MAX_RATIO: u64 = 1032;
/// Elements a tensor may address beyond its storage's size (stride-0 expanded views), and
/// the allowance added to the total output budget.
const MAX_EXPANDED_ELEMENTS: usize = 1 << 24;
/// The decoded tensors may hold at most this many times the stored elements (tied weights
/// make two names share one storage), plus [`MAX_EXPANDED_ELEMENTS`].
const MAX_OUTPUT_FACTOR: usize = 4;

/// Reads every tensor of a PyTorch zip checkpoint (`torch.save` of a state dict, as in the
/// official `pytorch_model.bin` files) without Python.
///
/// Floating storages (F32, F64, F16, BF16) widen to `f32` and integer or bool storages to
/// `i64`; [`HostTensor::stored_as`] names the storage dtype (`"F32"`, `"F16"`, `"BF16"`,
/// `"F64"`, `"I64"`, `"I32"`, `"I16"`, `"I8"`, `"U8"` or `"BOOL"`). Views into a shared
/// storage (offsets, arbitrary strides) are gathered in row-major order of their shape.
///
/// # Errors
///
/// [`Error::Io`] when the file cannot be read, and [`Error::Format`] for anything malformed:
/// not a zip archive, no `<prefix>/data.pkl`, a big-endian checkpoint, a pickle opcode or
/// global outside the small supported set, a view reaching outside its storage, a storage
/// entry of the wrong size, … — each saying what is wrong and where.
pub fn read_torch_bin(path: &Path) -> Result<TensorMap> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let file_len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    read_archive(BufReader::new(file), file_len, path)
}

// ---------------------------------------------------------------------------------------------
// Pickle machine
// ---------------------------------------------------------------------------------------------

/// Element type of a torch storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DType {
    F32,
    F64,
    F16,
    Bf16,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
}

impl DType {
    /// Bytes per element.
    fn size(self) -> usize {
        match self {
            DType::F64 | DType::I64 => 8,
            DType::F32 | DType::I32 => 4,
            DType::F16 | DType::Bf16 | DType::I16 => 2,
            DType::I8 | DType::U8 | DType::Bool => 1,
        }
    }

    /// The name [`HostTensor::stored_as`] uses.
    fn name(self) -> &'static str {
        match self {
            DType::F32 => "F32",
            DType::F64 => "F64",
            DType::F16 => "F16",
            DType::Bf16 => "BF16",
            DType::I64 => "I64",
            DType::I32 => "I32",
            DType::I16 => "I16",
            DType::I8 => "I8",
            DType::U8 => "U8",
            DType::Bool => "BOOL",
        }
    }

    /// The floating type to decode with, or `None` for an integer type.
    fn float(self) -> Option<FloatType> {
        match self {
            DType::F32 => Some(FloatType::F32),
            DType::F64 => Some(FloatType::F64),
            DType::F16 => Some(FloatType::F16),
            DType::Bf16 => Some(FloatType::Bf16),
            _ => None,
        }
    }

    /// The dtype of a legacy typed storage class (`torch.FloatStorage`, …).
    fn from_storage_class(name: &str) -> Option<DType> {
        Some(match name {
            "FloatStorage" => DType::F32,
            "DoubleStorage" => DType::F64,
            "HalfStorage" => DType::F16,
            "BFloat16Storage" => DType::Bf16,
            "LongStorage" => DType::I64,
            "IntStorage" => DType::I32,
            "ShortStorage" => DType::I16,
            "CharStorage" => DType::I8,
            "ByteStorage" | "UntypedStorage" => DType::U8,
            "BoolStorage" => DType::Bool,
            _ => return None,
        })
    }

    /// The dtype named by a `torch.<dtype>` attribute (`torch.float32`, `torch.half`, …).
    fn from_torch_dtype(name: &str) -> Option<DType> {
        Some(match name {
            "float32" | "float" => DType::F32,
            "float64" | "double" => DType::F64,
            "float16" | "half" => DType::F16,
            "bfloat16" => DType::Bf16,
            "int64" | "long" => DType::I64,
            "int32" | "int" => DType::I32,
            "int16" | "short" => DType::I16,
            "int8" => DType::I8,
            "uint8" => DType::U8,
            "bool" => DType::Bool,
            _ => return None,
        })
    }
}

/// The only globals the unpickler accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Global {
    /// `collections.OrderedDict`.
    OrderedDict,
    /// `torch._utils._rebuild_tensor_v2`.
    RebuildTensorV2,
    /// `torch._utils._rebuild_parameter`.
    RebuildParameter,
    /// A storage class (`torch.FloatStorage`, …, `torch.UntypedStorage` as bytes).
    StorageClass(DType),
    /// A dtype object (`torch.float32`, …).
    DType(DType),
}

impl Global {
    /// Resolves `module.name`, or `None` when it is not on the allow list.
    fn resolve(module: &str, name: &str) -> Option<Global> {
        match (module, name) {
            ("collections", "OrderedDict") => Some(Global::OrderedDict),
            ("torch._utils", "_rebuild_tensor_v2") => Some(Global::RebuildTensorV2),
            ("torch._utils", "_rebuild_parameter") => Some(Global::RebuildParameter),
            ("torch.storage", "UntypedStorage") => Some(Global::StorageClass(DType::U8)),
            ("torch" | "torch.cuda", _) if name.ends_with("Storage") => {
                DType::from_storage_class(name).map(Global::StorageClass)
            }
            ("torch", _) => DType::from_torch_dtype(name).map(Global::DType),
            _ => None,
        }
    }

    /// How the global reads in messages.
    fn describe(self) -> String {
        match self {
            Global::OrderedDict => "collections.OrderedDict".to_string(),
            Global::RebuildTensorV2 => "torch._utils._rebuild_tensor_v2".to_string(),
            Global::RebuildParameter => "torch._utils._rebuild_parameter".to_string(),
            Global::StorageClass(d) => format!("torch storage class of {}", d.name()),
            Global::DType(d) => format!("torch dtype {}", d.name()),
        }
    }
}

/// A storage named by a persistent id: `('storage', type, key, location, numel)`.
#[derive(Debug)]
struct StorageRef {
    dtype: DType,
    key: Rc<str>,
    numel: usize,
}

/// A tensor as `_rebuild_tensor_v2` describes it: a view into a storage.
#[derive(Debug)]
struct TensorRef {
    storage: Rc<StorageRef>,
    offset: usize,
    size: Vec<usize>,
    stride: Vec<usize>,
}

/// Items of a tuple, list or set, with the nesting depth they reach.
#[derive(Debug, Clone, Default)]
struct Seq {
    items: Vec<Value>,
    depth: usize,
}

/// Pairs of a dict in insertion order, with the nesting depth they reach.
#[derive(Debug, Clone, Default)]
struct Pairs {
    pairs: Vec<(Value, Value)>,
    depth: usize,
}

/// A value on the pickle stack. Containers are shared (`Rc`) so memo lookups are cheap; a
/// shared container that is modified is copied first, so values can never form a cycle.
#[derive(Debug, Clone)]
enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(Rc<str>),
    Bytes(Rc<[u8]>),
    Tuple(Rc<Seq>),
    /// A list or a set.
    List(Rc<Seq>),
    Dict(Rc<Pairs>),
    Global(Global),
    Storage(Rc<StorageRef>),
    Tensor(Rc<TensorRef>),
}

impl Value {
    /// Nesting depth: 0 for scalars.
    fn depth(&self) -> usize {
        match self {
            Value::Tuple(s) | Value::List(s) => s.depth,
            Value::Dict(d) => d.depth,
            Value::Storage(_) => 1,
            Value::Tensor(_) => 2,
            _ => 0,
        }
    }

    /// A short description for error messages.
    fn describe(&self) -> String {
        match self {
            Value::None => "None".to_string(),
            Value::Bool(b) => format!("bool {b}"),
            Value::Int(i) => format!("int {i}"),
            Value::Float(f) => format!("float {f}"),
            Value::Str(s) => {
                let short: String = s.chars().take(40).collect();
                if short.len() < s.len() {
                    format!("string `{short}…`")
                } else {
                    format!("string `{short}`")
                }
            }
            Value::Bytes(b) => format!("bytes of length {}", b.len()),
            Value::Tuple(s) => format!("tuple of {} items", s.items.len()),
            Value::List(s) => format!("list of {} items", s.items.len()),
            Value::Dict(d) => format!("dict of {} items", d.pairs.len()),
            Value::Global(g) => format!("global {}", g.describe()),
            Value::Storage(s) => format!("storage `{}`", s.key),
            Value::Tensor(_) => "tensor".to_string(),
        }
    }

    /// A tuple of `items`, if not nested too deeply.
    fn tuple(items: Vec<Value>) -> std::result::Result<Value, String> {
        let depth = seq_depth(&items)?;
        Ok(Value::Tuple(Rc::new(Seq { items, depth })))
    }
}

/// Depth of a container holding `items`, checked against [`MAX_DEPTH`].
fn seq_depth<'v>(items: impl IntoIterator<Item = &'v Value>) -> std::result::Result<usize, String> {
    let depth = items.into_iter().map(|v| v.depth() + 1).max().unwrap_or(1);
    if depth > MAX_DEPTH {
        Err(format!("values nested deeper than {MAX_DEPTH} levels"))
    } else {
        Ok(depth)
    }
}

/// A mutable reference into a shared container, copying it first when it is shared; the
/// copied elements are charged to `work`.
fn unique<'v, T: Clone>(
    rc: &'v mut Rc<T>,
    len: usize,
    work: &mut usize,
) -> std::result::Result<&'v mut T, String> {
    if Rc::get_mut(rc).is_none() {
        *work = work.saturating_add(len).saturating_add(1);
        if *work > MAX_COPY_WORK {
            return Err(format!(
                "more than {MAX_COPY_WORK} elements copied modifying shared containers"
            ));
        }
    }
    Ok(Rc::make_mut(rc))
}

/// The name of a pickle opcode, for messages.
fn opcode_name(op: u8) -> &'static str {
    match op {
        b'(' => "MARK",
        b'.' => "STOP",
        b'0' => "POP",
        b'1' => "POP_MARK",
        b'2' => "DUP",
        b'F' => "FLOAT",
        b'I' => "INT",
        b'J' => "BININT",
        b'K' => "BININT1",
        b'L' => "LONG",
        b'M' => "BININT2",
        b'N' => "NONE",
        b'P' => "PERSID",
        b'Q' => "BINPERSID",
        b'R' => "REDUCE",
        b'S' => "STRING",
        b'T' => "BINSTRING",
        b'U' => "SHORT_BINSTRING",
        b'V' => "UNICODE",
        b'X' => "BINUNICODE",
        b'a' => "APPEND",
        b'b' => "BUILD",
        b'c' => "GLOBAL",
        b'd' => "DICT",
        b'}' => "EMPTY_DICT",
        b'e' => "APPENDS",
        b'g' => "GET",
        b'h' => "BINGET",
        b'i' => "INST",
        b'j' => "LONG_BINGET",
        b'l' => "LIST",
        b']' => "EMPTY_LIST",
        b'o' => "OBJ",
        b'p' => "PUT",
        b'q' => "BINPUT",
        b'r' => "LONG_BINPUT",
        b's' => "SETITEM",
        b't' => "TUPLE",
        b')' => "EMPTY_TUPLE",
        b'u' => "SETITEMS",
        b'G' => "BINFLOAT",
        b'B' => "BINBYTES",
        b'C' => "SHORT_BINBYTES",
        0x80 => "PROTO",
        0x81 => "NEWOBJ",
        0x82 => "EXT1",
        0x83 => "EXT2",
        0x84 => "EXT4",
        0x85 => "TUPLE1",
        0x86 => "TUPLE2",
        0x87 => "TUPLE3",
        0x88 => "NEWTRUE",
        0x89 => "NEWFALSE",
        0x8a => "LONG1",
        0x8b => "LONG4",
        0x8c => "SHORT_BINUNICODE",
        0x8d => "BINUNICODE8",
        0x8e => "BINBYTES8",
        0x8f => "EMPTY_SET",
        0x90 => "ADDITEMS",
        0x91 => "FROZENSET",
        0x92 => "NEWOBJ_EX",
        0x93 => "STACK_GLOBAL",
        0x94 => "MEMOIZE",
        0x95 => "FRAME",
        0x96 => "BYTEARRAY8",
        0x97 => "NEXT_BUFFER",
        0x98 => "READONLY_BUFFER",
        _ => "unknown",
    }
}

/// Decodes a little-endian two's-complement integer (LONG1 / LONG4) that must fit in `i64`.
fn decode_long(bytes: &[u8]) -> std::result::Result<i64, String> {
    let negative = bytes.last().is_some_and(|b| b & 0x80 != 0);
    let fill = if negative { 0xff } else { 0x00 };
    if bytes.len() > 8 {
        let high_ok = bytes[8..].iter().all(|&b| b == fill);
        let sign_ok = (bytes[7] & 0x80 != 0) == negative;
        if !high_ok || !sign_ok {
            return Err(format!(
                "integer of {} bytes does not fit in 64 bits",
                bytes.len()
            ));
        }
    }
    let mut buf = [fill; 8];
    let n = bytes.len().min(8);
    buf[..n].copy_from_slice(&bytes[..n]);
    Ok(i64::from_le_bytes(buf))
}

/// What one opcode did.
enum Step {
    Continue,
    Stop(Value),
}

/// The restricted unpickler: a stack, a MARK stack and a memo; nothing is ever executed.
struct Unpickler<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
    copy_work: usize,
}

type PResult<T> = std::result::Result<T, String>;

impl<'a> Unpickler<'a> {
    fn new(data: &'a [u8]) -> Self {
        Unpickler {
            data,
            pos: 0,
            stack: Vec::new(),
            marks: Vec::new(),
            memo: HashMap::new(),
            copy_work: 0,
        }
    }

    /// Runs to the STOP opcode and returns the value it leaves.
    fn run(mut self) -> PResult<Value> {
        loop {
            let at = self.pos;
            let Some(&op) = self.data.get(at) else {
                return Err(format!("pickle ends at byte {at} without a STOP opcode"));
            };
            self.pos += 1;
            match self.step(op) {
                Ok(Step::Continue) => {}
                Ok(Step::Stop(value)) => return Ok(value),
                Err(None) => {
                    return Err(format!(
                        "pickle opcode 0x{op:02x} ({}) at byte {at} is not supported",
                        opcode_name(op)
                    ));
                }
                Err(Some(reason)) => {
                    return Err(format!(
                        "pickle opcode 0x{op:02x} ({}) at byte {at}: {reason}",
                        opcode_name(op)
                    ));
                }
            }
        }
    }

    // --- argument reading ---

    fn take(&mut self, n: usize) -> PResult<&'a [u8]> {
        let rest = self.data.len() - self.pos;
        if n > rest {
            return Err(format!("truncated: needs {n} argument bytes, {rest} remain"));
        }
        let out = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn take_array<const N: usize>(&mut self) -> PResult<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn take_u8(&mut self) -> PResult<u8> {
        Ok(self.take_array::<1>()?[0])
    }

    fn take_u32(&mut self) -> PResult<u32> {
        Ok(u32::from_le_bytes(self.take_array()?))
    }

    fn take_u64(&mut self) -> PResult<u64> {
        Ok(u64::from_le_bytes(self.take_array()?))
    }

    /// Takes a length-prefixed payload whose length is given as a `u64`.
    fn take_len(&mut self, len: u64) -> PResult<&'a [u8]> {
        let n = usize::try_from(len).map_err(|_| format!("length {len} is too large"))?;
        self.take(n)
    }

    /// Takes a newline-terminated line (GLOBAL arguments).
    fn take_line(&mut self) -> PResult<&'a str> {
        let rest = &self.data[self.pos..];
        let end = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| "truncated: no newline ends the argument".to_string())?;
        self.pos += end + 1;
        std::str::from_utf8(&rest[..end]).map_err(|_| "argument is not UTF-8".to_string())
    }

    fn utf8(bytes: &[u8]) -> PResult<Value> {
        std::str::from_utf8(bytes)
            .map(|s| Value::Str(Rc::from(s)))
            .map_err(|_| "string is not valid UTF-8".to_string())
    }

    // --- stack ---

    /// Index of the first stack slot above the innermost MARK.
    fn base(&self) -> usize {
        self.marks.last().copied().unwrap_or(0)
    }

    fn push(&mut self, value: Value) -> PResult<()> {
        if self.stack.len() >= MAX_STACK {
            return Err(format!("more than {MAX_STACK} values on the stack"));
        }
        self.stack.push(value);
        Ok(())
    }

    fn pop(&mut self) -> PResult<Value> {
        if self.stack.len() <= self.base() {
            return Err("stack underflow".to_string());
        }
        self.stack.pop().ok_or_else(|| "stack underflow".to_string())
    }

    fn top(&self) -> PResult<&Value> {
        if self.stack.len() <= self.base() {
            return Err("stack underflow".to_string());
        }
        self.stack.last().ok_or_else(|| "stack underflow".to_string())
    }

    /// Pops everything above the innermost MARK, and the MARK.
    fn pop_mark(&mut self) -> PResult<Vec<Value>> {
        let base = self
            .marks
            .pop()
            .ok_or_else(|| "no MARK to pop to".to_string())?;
        if base > self.stack.len() {
            return Err("stack underflow below MARK".to_string());
        }
        Ok(self.stack.split_off(base))
    }

    fn pop_n(&mut self, n: usize) -> PResult<Vec<Value>> {
        if self.stack.len() < self.base() + n {
            return Err("stack underflow".to_string());
        }
        Ok(self.stack.split_off(self.stack.len() - n))
    }

    fn memo_put(&mut self, index: u32) -> PResult<()> {
        let value = self.top()?.clone();
        if self.memo.len() >= MAX_MEMO && !self.memo.contains_key(&index) {
            return Err(format!("more than {MAX_MEMO} memo entries"));
        }
        self.memo.insert(index, value);
        Ok(())
    }

    fn memo_get(&mut self, index: u32) -> PResult<()> {
        let value = self
            .memo
            .get(&index)
            .cloned()
            .ok_or_else(|| format!("memo index {index} was never stored"))?;
        self.push(value)
    }

    /// Appends `items` to the list (or set) on top of the stack.
    fn extend_list(&mut self, items: Vec<Value>) -> PResult<()> {
        let depth = seq_depth(&items)?;
        if self.stack.len() <= self.base() {
            return Err("stack underflow".to_string());
        }
        match self.stack.last_mut() {
            Some(Value::List(rc)) => {
                let len = rc.items.len();
                let seq = unique(rc, len, &mut self.copy_work)?;
                seq.items.extend(items);
                seq.depth = seq.depth.max(depth);
                Ok(())
            }
            Some(other) => Err(format!("expected a list or set, found {}", other.describe())),
            None => Err("stack underflow".to_string()),
        }
    }

    /// Adds alternating keys and values to the dict on top of the stack.
    fn extend_dict(&mut self, items: Vec<Value>) -> PResult<()> {
        if items.len() % 2 != 0 {
            return Err(format!("odd number of items ({}) for a dict", items.len()));
        }
        let depth = seq_depth(&items)?;
        if self.stack.len() <= self.base() {
            return Err("stack underflow".to_string());
        }
        match self.stack.last_mut() {
            Some(Value::Dict(rc)) => {
                let len = rc.pairs.len();
                let dict = unique(rc, len, &mut self.copy_work)?;
                let mut it = items.into_iter();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    dict.pairs.push((k, v));
                }
                dict.depth = dict.depth.max(depth);
                Ok(())
            }
            Some(other) => Err(format!("expected a dict, found {}", other.describe())),
            None => Err("stack underflow".to_string()),
        }
    }

    fn push_global(&mut self, module: &str, name: &str) -> PResult<()> {
        let global = Global::resolve(module, name).ok_or_else(|| {
            let shown: String = format!("{module}.{name}").chars().take(120).collect();
            format!("global `{shown}` is not allowed (only the globals of a torch state dict are)")
        })?;
        self.push(Value::Global(global))
    }

    /// Executes one opcode. `Err(None)` means the opcode is not supported.
    fn step(&mut self, op: u8) -> std::result::Result<Step, Option<String>> {
        self.step_inner(op).map_err(Some)?.ok_or(None)
    }

    fn step_inner(&mut self, op: u8) -> PResult<Option<Step>> {
        match op {
            // Framing and protocol.
            0x80 => {
                let version = self.take_u8()?;
                if version > 5 {
                    return Err(format!("pickle protocol {version} is not supported"));
                }
            }
            0x95 => {
                let len = self.take_u64()?;
                let rest = (self.data.len() - self.pos) as u64;
                if len > rest {
                    return Err(format!("frame of {len} bytes but only {rest} remain"));
                }
            }
            b'.' => return Ok(Some(Step::Stop(self.pop()?))),

            // Stack manipulation.
            b'(' => {
                if self.marks.len() >= MAX_MARKS {
                    return Err(format!("more than {MAX_MARKS} open MARKs"));
                }
                self.marks.push(self.stack.len());
            }
            b'0' => {
                if self.stack.len() > self.base() {
                    self.stack.pop();
                } else {
                    self.pop_mark()?;
                }
            }
            b'1' => {
                self.pop_mark()?;
            }
            b'2' => {
                let value = self.top()?.clone();
                self.push(value)?;
            }

            // Scalars.
            b'N' => self.push(Value::None)?,
            0x88 => self.push(Value::Bool(true))?,
            0x89 => self.push(Value::Bool(false))?,
            b'J' => {
                let v = i32::from_le_bytes(self.take_array()?);
                self.push(Value::Int(i64::from(v)))?;
            }
            b'K' => {
                let v = self.take_u8()?;
                self.push(Value::Int(i64::from(v)))?;
            }
            b'M' => {
                let v = u16::from_le_bytes(self.take_array()?);
                self.push(Value::Int(i64::from(v)))?;
            }
            0x8a => {
                let n = self.take_u8()?;
                let v = decode_long(self.take(usize::from(n))?)?;
                self.push(Value::Int(v))?;
            }
            0x8b => {
                let n = i32::from_le_bytes(self.take_array()?);
                let n = u64::try_from(n).map_err(|_| format!("negative length {n}"))?;
                let v = decode_long(self.take_len(n)?)?;
                self.push(Value::Int(v))?;
            }
            b'G' => {
                let v = f64::from_be_bytes(self.take_array()?);
                self.push(Value::Float(v))?;
            }

            // Strings and bytes.
            b'X' => {
                let n = self.take_u32()?;
                let v = Self::utf8(self.take_len(u64::from(n))?)?;
                self.push(v)?;
            }
            0x8c => {
                let n = self.take_u8()?;
                let v = Self::utf8(self.take(usize::from(n))?)?;
                self.push(v)?;
            }
            0x8d => {
                let n = self.take_u64()?;
                let v = Self::utf8(self.take_len(n)?)?;
                self.push(v)?;
            }
            b'T' => {
                let n = i32::from_le_bytes(self.take_array()?);
                let n = u64::try_from(n).map_err(|_| format!("negative length {n}"))?;
                let v = Self::utf8(self.take_len(n)?)?;
                self.push(v)?;
            }
            b'U' => {
                let n = self.take_u8()?;
                let v = Self::utf8(self.take(usize::from(n))?)?;
                self.push(v)?;
            }
            b'B' => {
                let n = self.take_u32()?;
                let v = self.take_len(u64::from(n))?;
                self.push(Value::Bytes(Rc::from(v)))?;
            }
            b'C' => {
                let n = self.take_u8()?;
                let v = self.take(usize::from(n))?;
                self.push(Value::Bytes(Rc::from(v)))?;
            }
            0x8e | 0x96 => {
                let n = self.take_u64()?;
                let v = self.take_len(n)?;
                self.push(Value::Bytes(Rc::from(v)))?;
            }

            // Tuples.
            b')' => self.push(Value::tuple(Vec::new())?)?,
            b't' => {
                let items = self.pop_mark()?;
                self.push(Value::tuple(items)?)?;
            }
            0x85..=0x87 => {
                let items = self.pop_n(usize::from(op - 0x84))?;
                self.push(Value::tuple(items)?)?;
            }

            // Lists and sets (a set is kept as a list).
            b']' | 0x8f => self.push(Value::List(Rc::default()))?,
            b'l' => {
                let items = self.pop_mark()?;
                let depth = seq_depth(&items)?;
                self.push(Value::List(Rc::new(Seq { items, depth })))?;
            }
            b'a' => {
                let item = self.pop()?;
                self.extend_list(vec![item])?;
            }
            b'e' | 0x90 => {
                let items = self.pop_mark()?;
                self.extend_list(items)?;
            }
            0x91 => {
                let items = self.pop_mark()?;
                self.push(Value::tuple(items)?)?;
            }

            // Dicts.
            b'}' => self.push(Value::Dict(Rc::default()))?,
            b'd' => {
                let items = self.pop_mark()?;
                self.push(Value::Dict(Rc::default()))?;
                self.extend_dict(items)?;
            }
            b's' => {
                let items = self.pop_n(2)?;
                self.extend_dict(items)?;
            }
            b'u' => {
                let items = self.pop_mark()?;
                self.extend_dict(items)?;
            }

            // Memo.
            b'q' => {
                let index = self.take_u8()?;
                self.memo_put(u32::from(index))?;
            }
            b'r' => {
                let index = self.take_u32()?;
                self.memo_put(index)?;
            }
            0x94 => {
                let index = u32::try_from(self.memo.len())
                    .map_err(|_| "memo is full".to_string())?;
                self.memo_put(index)?;
            }
            b'h' => {
                let index = self.take_u8()?;
                self.memo_get(u32::from(index))?;
            }
            b'j' => {
                let index = self.take_u32()?;
                self.memo_get(index)?;
            }

            // Globals, calls and persistent ids: only the torch state-dict vocabulary.
            b'c' => {
                let module = self.take_line()?;
                let name = self.take_line()?;
                self.push_global(module, name)?;
            }
            0x93 => {
                let name = self.pop()?;
                let module = self.pop()?;
                match (&module, &name) {
                    (Value::Str(m), Value::Str(n)) => self.push_global(m, n)?,
                    _ => {
                        return Err(format!(
                            "module and name must be strings, found {} and {}",
                            module.describe(),
                            name.describe()
                        ));
                    }
                }
            }
            b'R' => {
                let args = self.pop()?;
                let func = self.pop()?;
                let value = reduce(&func, &args)?;
                self.push(value)?;
            }
            b'b' => {
                // The state set on an OrderedDict (`_metadata`) or a tensor is not needed.
                let _state = self.pop()?;
                match self.top()? {
                    Value::Dict(_) | Value::Tensor(_) => {}
                    other => {
                        return Err(format!("cannot BUILD a {}", other.describe()));
                    }
                }
            }
            b'Q' => {
                let pid = self.pop()?;
                let storage = persistent_load(&pid)?;
                self.push(Value::Storage(Rc::new(storage)))?;
            }
            _ => return Ok(None),
        }
        Ok(Some(Step::Continue))
    }
}

// ---------------------------------------------------------------------------------------------
// Torch reconstruction
// ---------------------------------------------------------------------------------------------

/// A non-negative integer that fits in `usize`.
fn as_index(value: &Value, what: &str) -> PResult<usize> {
    match value {
        Value::Int(i) => {
            usize::try_from(*i).map_err(|_| format!("{what} is {i}, not a non-negative index"))
        }
        other => Err(format!("{what} is a {}, not an integer", other.describe())),
    }
}

/// A tuple or list of non-negative integers.
fn as_dims(value: &Value, what: &str) -> PResult<Vec<usize>> {
    match value {
        Value::Tuple(s) | Value::List(s) => s
            .items
            .iter()
            .enumerate()
            .map(|(i, v)| as_index(v, &format!("{what}[{i}]")))
            .collect(),
        other => Err(format!("{what} is a {}, not a tuple", other.describe())),
    }
}

/// BINPERSID: `('storage', storage type, key, location, numel)` → a storage reference.
fn persistent_load(pid: &Value) -> PResult<StorageRef> {
    let Value::Tuple(t) = pid else {
        return Err(format!(
            "persistent id is a {}, not a tuple",
            pid.describe()
        ));
    };
    let [tag, kind, key, location, numel] = t.items.as_slice() else {
        return Err(format!(
            "persistent id has {} items, expected 5 ('storage', type, key, location, numel)",
            t.items.len()
        ));
    };
    match tag {
        Value::Str(s) if &**s == "storage" => {}
        other => {
            return Err(format!(
                "persistent id tag is {}, expected `storage`",
                other.describe()
            ));
        }
    }
    let dtype = match kind {
        Value::Global(Global::StorageClass(d) | Global::DType(d)) => *d,
        other => {
            return Err(format!(
                "persistent id storage type is {}, not a torch storage class",
                other.describe()
            ));
        }
    };
    let Value::Str(key) = key else {
        return Err(format!(
            "persistent id key is {}, not a string",
            key.describe()
        ));
    };
    if !matches!(location, Value::Str(_)) {
        return Err(format!(
            "persistent id location is {}, not a string",
            location.describe()
        ));
    }
    let numel = as_index(numel, "storage size")?;
    Ok(StorageRef {
        dtype,
        key: key.clone(),
        numel,
    })
}

/// REDUCE: calls one of the allowed globals.
fn reduce(func: &Value, args: &Value) -> PResult<Value> {
    let Value::Global(global) = func else {
        return Err(format!("cannot call a {}", func.describe()));
    };
    let Value::Tuple(args) = args else {
        return Err(format!("arguments are a {}, not a tuple", args.describe()));
    };
    let args = args.items.as_slice();
    match global {
        Global::OrderedDict => {
            if args.is_empty() {
                Ok(Value::Dict(Rc::default()))
            } else {
                Err(format!(
                    "collections.OrderedDict called with {} arguments, expected none",
                    args.len()
                ))
            }
        }
        Global::RebuildTensorV2 => rebuild_tensor(args),
        Global::RebuildParameter => match args {
            [tensor @ Value::Tensor(_), _requires_grad, _hooks] => Ok(tensor.clone()),
            _ => Err(format!(
                "torch._utils._rebuild_parameter expects (tensor, requires_grad, hooks), got {} \
                 arguments",
                args.len()
            )),
        },
        other => Err(format!("{} cannot be called", other.describe())),
    }
}

/// `_rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, hooks[, meta])`.
fn rebuild_tensor(args: &[Value]) -> PResult<Value> {
    if args.len() != 6 && args.len() != 7 {
        return Err(format!(
            "torch._utils._rebuild_tensor_v2 expects 6 or 7 arguments, got {}",
            args.len()
        ));
    }
    let Value::Storage(storage) = &args[0] else {
        return Err(format!(
            "tensor storage is a {}, not a storage",
            args[0].describe()
        ));
    };
    let offset = as_index(&args[1], "storage offset")?;
    let size = as_dims(&args[2], "size")?;
    let stride = as_dims(&args[3], "stride")?;
    if size.len() != stride.len() {
        return Err(format!(
            "size has {} dimensions but stride has {}",
            size.len(),
            stride.len()
        ));
    }
    Ok(Value::Tensor(Rc::new(TensorRef {
        storage: storage.clone(),
        offset,
        size,
        stride,
    })))
}

/// Runs the pickle and returns its `{name: tensor}` entries.
fn unpickle_state_dict(data: &[u8]) -> PResult<Vec<(String, Rc<TensorRef>)>> {
    let root = Unpickler::new(data).run()?;
    let Value::Dict(dict) = &root else {
        return Err(format!(
            "the pickle holds a {}, not a dict of tensors",
            root.describe()
        ));
    };
    let mut entries = Vec::with_capacity(dict.pairs.len());
    for (key, value) in &dict.pairs {
        let Value::Str(name) = key else {
            return Err(format!(
                "a state-dict key is a {}, not a string",
                key.describe()
            ));
        };
        let Value::Tensor(tensor) = value else {
            return Err(format!(
                "state-dict entry `{name}` is a {}, not a tensor",
                value.describe()
            ));
        };
        entries.push((name.to_string(), tensor.clone()));
    }
    Ok(entries)
}

/// Dimensions for messages, shortened when there are many.
fn show_dims(dims: &[usize]) -> String {
    if dims.len() <= 8 {
        format!("{dims:?}")
    } else {
        format!("{:?}… ({} dimensions)", &dims[..8], dims.len())
    }
}

/// A tensor whose view has been checked against its storage's declared size.
struct Planned {
    name: String,
    tensor: Rc<TensorRef>,
    numel: usize,
}

/// Every tensor checked, and the distinct storages they use (each with a consistent dtype
/// and size).
struct Plan {
    tensors: Vec<Planned>,
    storages: BTreeMap<Rc<str>, Rc<StorageRef>>,
}

/// Checks names, views and storage declarations before any storage is read.
fn plan_tensors(entries: Vec<(String, Rc<TensorRef>)>) -> PResult<Plan> {
    let mut storages: BTreeMap<Rc<str>, Rc<StorageRef>> = BTreeMap::new();
    let mut names = std::collections::BTreeSet::new();
    let mut tensors = Vec::with_capacity(entries.len());
    for (name, tensor) in entries {
        if !names.insert(name.clone()) {
            return Err(format!("tensor `{name}` appears twice in the state dict"));
        }
        let storage = &tensor.storage;
        match storages.get(&storage.key) {
            Some(known) if known.dtype != storage.dtype || known.numel != storage.numel => {
                return Err(format!(
                    "tensor `{name}`: storage `{}` is declared as {} elements of {} here but \
                     as {} elements of {} elsewhere",
                    storage.key,
                    storage.numel,
                    storage.dtype.name(),
                    known.numel,
                    known.dtype.name()
                ));
            }
            Some(_) => {}
            None => {
                storage
                    .numel
                    .checked_mul(storage.dtype.size())
                    .ok_or_else(|| {
                        format!(
                            "tensor `{name}`: storage `{}` of {} elements of {} is too large",
                            storage.key,
                            storage.numel,
                            storage.dtype.name()
                        )
                    })?;
                storages.insert(storage.key.clone(), storage.clone());
            }
        }
        let numel = check_view(&name, &tensor)?;
        tensors.push(Planned {
            name,
            tensor,
            numel,
        });
    }
    Ok(Plan { tensors, storages })
}

/// Checks that every element of a view lies inside its storage; returns the element count.
fn check_view(name: &str, t: &TensorRef) -> PResult<usize> {
    let storage = &t.storage;
    let numel = t
        .size
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| {
            format!(
                "tensor `{name}`: shape {} has too many elements",
                show_dims(&t.size)
            )
        })?;
    if numel == 0 {
        return Ok(0);
    }
    let overflow = || {
        format!(
            "tensor `{name}`: shape {} with stride {} and offset {} overflows",
            show_dims(&t.size),
            show_dims(&t.stride),
            t.offset
        )
    };
    let mut last = t.offset;
    for (&d, &s) in t.size.iter().zip(&t.stride) {
        let reach = (d - 1).checked_mul(s).ok_or_else(overflow)?;
        last = last.checked_add(reach).ok_or_else(overflow)?;
    }
    let needs = last.checked_add(1).ok_or_else(overflow)?;
    if needs > storage.numel {
        return Err(format!(
            "tensor `{name}`: storage `{}` holds {} elements but shape {} with stride {} and \
             offset {} needs {needs}",
            storage.key,
            storage.numel,
            show_dims(&t.size),
            show_dims(&t.stride),
            t.offset
        ));
    }
    if numel > storage.numel.max(MAX_EXPANDED_ELEMENTS) {
        return Err(format!(
            "tensor `{name}`: shape {} has {numel} elements, far more than its storage `{}` \
             holds ({}); such an expanded view is refused",
            show_dims(&t.size),
            storage.key,
            storage.numel
        ));
    }
    Ok(numel)
}

/// Checks the total number of decoded elements against the stored ones.
fn check_budget(plan: &Plan) -> PResult<()> {
    let stored = plan
        .storages
        .values()
        .fold(0usize, |acc, s| acc.saturating_add(s.numel));
    let limit = stored
        .saturating_mul(MAX_OUTPUT_FACTOR)
        .saturating_add(MAX_EXPANDED_ELEMENTS);
    let total = plan
        .tensors
        .iter()
        .fold(0usize, |acc, t| acc.saturating_add(t.numel));
    if total > limit {
        return Err(format!(
            "the tensors hold {total} elements in all, more than {MAX_OUTPUT_FACTOR} times the \
             {stored} stored elements"
        ));
    }
    Ok(())
}

/// The bytes of a view's elements in row-major order of its shape.
fn gather<'b>(bytes: &'b [u8], elem: usize, t: &TensorRef, numel: usize) -> PResult<Cow<'b, [u8]>> {
    let out_of_range = || "element outside its storage".to_string();
    let total = numel.checked_mul(elem).ok_or_else(out_of_range)?;
    if numel == 0 {
        return Ok(Cow::Borrowed(&[]));
    }
    // Dimensions of size 1 do not move through the storage.
    let dims: Vec<(usize, usize)> = t
        .size
        .iter()
        .zip(&t.stride)
        .filter(|(d, _)| **d != 1)
        .map(|(&d, &s)| (d, s))
        .collect();
    let mut expected = 1usize;
    let mut contiguous = true;
    for &(d, s) in dims.iter().rev() {
        if s != expected {
            contiguous = false;
            break;
        }
        expected = expected.saturating_mul(d);
    }
    let start = t.offset.checked_mul(elem).ok_or_else(out_of_range)?;
    if contiguous {
        let end = start.checked_add(total).ok_or_else(out_of_range)?;
        return bytes
            .get(start..end)
            .map(Cow::Borrowed)
            .ok_or_else(out_of_range);
    }

    let mut out = Vec::new();
    out.try_reserve_exact(total)
        .map_err(|_| format!("cannot allocate {total} bytes"))?;
    // `dims` is not empty here: with no dimensions left the view is contiguous.
    let (outer, inner) = dims.split_at(dims.len() - 1);
    let (run_len, run_stride) = inner[0];
    let mut index = vec![0usize; outer.len()];
    // Storage index of the start of the current innermost run; the wrapping arithmetic only
    // ever steps back to values already checked by `check_view`, and `get` guards every read.
    let mut base = t.offset;
    loop {
        if run_stride == 1 {
            let from = base.checked_mul(elem).ok_or_else(out_of_range)?;
            let to = from
                .checked_add(run_len * elem)
                .ok_or_else(out_of_range)?;
            out.extend_from_slice(bytes.get(from..to).ok_or_else(out_of_range)?);
        } else {
            let mut pos = base;
            for _ in 0..run_len {
                let from = pos.checked_mul(elem).ok_or_else(out_of_range)?;
                let to = from.checked_add(elem).ok_or_else(out_of_range)?;
                out.extend_from_slice(bytes.get(from..to).ok_or_else(out_of_range)?);
                pos = pos.wrapping_add(run_stride);
            }
        }
        let mut d = outer.len();
        loop {
            if d == 0 {
                return Ok(Cow::Owned(out));
            }
            d -= 1;
            let (size, stride) = outer[d];
            index[d] += 1;
            base = base.wrapping_add(stride);
            if index[d] < size {
                break;
            }
            index[d] = 0;
            base = base.wrapping_sub(stride.wrapping_mul(size));
        }
    }
}

/// Decodes `numel` little-endian elements of `dtype`.
fn decode(dtype: DType, bytes: &[u8], numel: usize) -> PResult<TensorData> {
    let alloc_err = |_| format!("cannot allocate {numel} elements");
    if let Some(float) = dtype.float() {
        let mut out = Vec::new();
        out.try_reserve_exact(numel).map_err(alloc_err)?;
        out.resize(numel, 0.0f32);
        decode_le(float, bytes, &mut out).map_err(|e| e.to_string())?;
        return Ok(TensorData::Float(out));
    }
    if bytes.len() != numel.saturating_mul(dtype.size()) {
        return Err(format!(
            "{} bytes for {numel} elements of {}",
            bytes.len(),
            dtype.name()
        ));
    }
    let mut out: Vec<i64> = Vec::new();
    out.try_reserve_exact(numel).map_err(alloc_err)?;
    let chunks = bytes.chunks_exact(dtype.size());
    match dtype {
        DType::I64 => out.extend(chunks.map(|c| {
            let mut b = [0u8; 8];
            b.copy_from_slice(c);
            i64::from_le_bytes(b)
        })),
        DType::I32 => out.extend(chunks.map(|c| {
            let mut b = [0u8; 4];
            b.copy_from_slice(c);
            i64::from(i32::from_le_bytes(b))
        })),
        DType::I16 => out.extend(chunks.map(|c| {
            let mut b = [0u8; 2];
            b.copy_from_slice(c);
            i64::from(i16::from_le_bytes(b))
        })),
        DType::I8 => out.extend(bytes.iter().map(|&b| i64::from(b as i8))),
        DType::U8 => out.extend(bytes.iter().map(|&b| i64::from(b))),
        DType::Bool => out.extend(bytes.iter().map(|&b| i64::from(b != 0))),
        DType::F32 | DType::F64 | DType::F16 | DType::Bf16 => {
            return Err("float dtype reached the integer decoder".to_string());
        }
    }
    Ok(TensorData::Int(out))
}

/// Builds one tensor from its storage's bytes.
fn build_tensor(planned: &Planned, bytes: &[u8]) -> PResult<HostTensor> {
    let t = &planned.tensor;
    let dtype = t.storage.dtype;
    let data = gather(bytes, dtype.size(), t, planned.numel)
        .and_then(|elems| decode(dtype, &elems, planned.numel))
        .map_err(|e| format!("tensor `{}`: {e}", planned.name))?;
    Ok(HostTensor {
        shape: t.size.clone(),
        data,
        stored_as: dtype.name().to_string(),
    })
}

// ---------------------------------------------------------------------------------------------
// Zip reading
// ---------------------------------------------------------------------------------------------

/// An I/O error while reading `what`: malformed data is a format error, anything else an I/O
/// error.
fn io_error(path: &Path, what: &str, e: std::io::Error) -> Error {
    use std::io::ErrorKind;
    match e.kind() {
        ErrorKind::InvalidData
        | ErrorKind::UnexpectedEof
        | ErrorKind::InvalidInput
        | ErrorKind::Unsupported => Error::format(path, format!("{what}: {e}")),
        _ => Error::io(path, e),
    }
}

/// A zip error while reading `what`.
fn zip_error(path: &Path, what: &str, e: ZipError) -> Error {
    match e {
        ZipError::Io(e) => io_error(path, what, e),
        other => Error::format(path, format!("{what}: {other}")),
    }
}

/// The top-level folder holding `data.pkl`.
fn find_prefix<R: Read + Seek>(archive: &ZipArchive<R>) -> PResult<String> {
    let mut found: Option<String> = None;
    for name in archive.file_names() {
        // A name that does not decode cannot be one of ours.
        let Ok(name) = name else { continue };
        let Some(prefix) = name.strip_suffix("/data.pkl") else {
            continue;
        };
        if prefix.is_empty() || prefix.contains('/') {
            continue;
        }
        if let Some(first) = &found {
            return Err(format!(
                "two pickles in one archive: `{first}/data.pkl` and `{prefix}/data.pkl`"
            ));
        }
        found = Some(prefix.to_string());
    }
    found.ok_or_else(|| {
        "no `<folder>/data.pkl` entry: not a PyTorch zip checkpoint (files from torch < 1.6, \
         saved with `_use_new_zipfile_serialization=False`, are not supported)"
            .to_string()
    })
}

/// Opens entry `name` after checking that its declared sizes are possible for a file of
/// `file_len` bytes, and passing its uncompressed size to `check_size`. `Ok(None)` when the
/// archive has no such entry.
fn open_entry<'z, R: Read + Seek>(
    archive: &'z mut ZipArchive<R>,
    name: &str,
    file_len: u64,
    path: &Path,
    check_size: impl FnOnce(u64) -> PResult<()>,
) -> Result<Option<zip::read::ZipFile<'z, R>>> {
    let what = format!("entry `{name}`");
    let entry = match archive.by_name(name) {
        Ok(entry) => entry,
        Err(ZipError::FileNotFound) => return Ok(None),
        Err(e) => return Err(zip_error(path, &what, e)),
    };
    let bad = |reason: String| Error::format(path, format!("{what}: {reason}"));
    let size = entry.size();
    let packed = entry.compressed_size();
    if entry.is_dir() {
        return Err(bad("is a directory".to_string()));
    }
    if packed > file_len {
        return Err(bad(format!(
            "claims {packed} compressed bytes in a file of {file_len}"
        )));
    }
    match entry.compression() {
        CompressionMethod::Stored => {
            if size != packed {
                return Err(bad(format!(
                    "stored uncompressed but claims {size} bytes in {packed}"
                )));
            }
        }
        CompressionMethod::Deflated => {
            let most = packed
                .saturating_mul(DEFLATE_MAX_RATIO)
                .saturating_add(1024);
            if size > most {
                return Err(bad(format!(
                    "claims {size} bytes, more than {packed} deflated bytes can hold"
                )));
            }
        }
        other => {
            return Err(bad(format!("compression method {other} is not supported")));
        }
    }
    check_size(size).map_err(bad)?;
    Ok(Some(entry))
}

/// Reads entry `name` whole (see [`open_entry`]).
fn read_entry<R: Read + Seek>(
    archive: &mut ZipArchive<R>,
    name: &str,
    file_len: u64,
    path: &Path,
    check_size: impl FnOnce(u64) -> PResult<()>,
) -> Result<Option<Vec<u8>>> {
    let Some(mut entry) = open_entry(archive, name, file_len, path, check_size)? else {
        return Ok(None);
    };
    let what = format!("entry `{name}`");
    let size = entry.size();
    let capacity = usize::try_from(size)
        .map_err(|_| Error::format(path, format!("{what}: {size} bytes do not fit in memory")))?;
    let mut buf = Vec::new();
    buf.try_reserve_exact(capacity)
        .map_err(|_| Error::format(path, format!("{what}: cannot allocate {size} bytes")))?;
    (&mut entry)
        .take(size.saturating_add(1))
        .read_to_end(&mut buf)
        .map_err(|e| io_error(path, &what, e))?;
    if buf.len() as u64 != size {
        return Err(Error::format(
            path,
            format!(
                "{what}: holds {} bytes but its header says {size}",
                buf.len()
            ),
        ));
    }
    Ok(Some(buf))
}

/// Rejects big-endian checkpoints (`<prefix>/byteorder` = `big`).
fn check_byteorder<R: Read + Seek>(
    archive: &mut ZipArchive<R>,
    prefix: &str,
    file_len: u64,
    path: &Path,
) -> Result<()> {
    let name = format!("{prefix}/byteorder");
    let small = |size: u64| {
        if size > 64 {
            Err(format!("{size} bytes is too long for a byte order"))
        } else {
            Ok(())
        }
    };
    let Some(bytes) = read_entry(archive, &name, file_len, path, small)? else {
        return Ok(()); // Older writers omit it; they were little-endian only.
    };
    match bytes.trim_ascii() {
        b"little" => Ok(()),
        b"big" => Err(Error::format(
            path,
            format!("`{name}` is `big`: big-endian checkpoints are not supported"),
        )),
        other => Err(Error::format(
            path,
            format!(
                "`{name}` is `{}`, expected `little`",
                String::from_utf8_lossy(&other[..other.len().min(64)])
            ),
        )),
    }
}

/// Reads a checkpoint from any seekable reader of `file_len` bytes; `path` labels errors.
fn read_archive<R: Read + Seek>(reader: R, file_len: u64, path: &Path) -> Result<TensorMap> {
    let mut archive = ZipArchive::new(reader)
        .map_err(|e| zip_error(path, "not a readable zip archive", e))?;
    let prefix = find_prefix(&archive).map_err(|r| Error::format(path, r))?;
    check_byteorder(&mut archive, &prefix, file_len, path)?;

    let pkl_name = format!("{prefix}/data.pkl");
    let limit = |size: u64| {
        if size > MAX_PICKLE_BYTES {
            Err(format!(
                "{size} bytes is more than the {MAX_PICKLE_BYTES} a state-dict pickle may have"
            ))
        } else {
            Ok(())
        }
    };
    let pkl = read_entry(&mut archive, &pkl_name, file_len, path, limit)?
        .ok_or_else(|| Error::format(path, format!("entry `{pkl_name}` cannot be opened")))?;
    let entries = unpickle_state_dict(&pkl)
        .map_err(|r| Error::format(path, format!("`{pkl_name}`: {r}")))?;
    drop(pkl);
    let plan = plan_tensors(entries).map_err(|r| Error::format(path, r))?;

    // Every storage a non-empty tensor uses, with the tensors that use it.
    let mut users: BTreeMap<Rc<str>, Vec<usize>> = BTreeMap::new();
    let mut map = TensorMap::new();
    for (i, planned) in plan.tensors.iter().enumerate() {
        if planned.numel == 0 {
            let tensor = build_tensor(planned, &[]).map_err(|r| Error::format(path, r))?;
            map.insert(planned.name.clone(), tensor);
        } else {
            users
                .entry(planned.tensor.storage.key.clone())
                .or_default()
                .push(i);
        }
    }
    // Only storages something reads count towards the output budget.
    let plan = Plan {
        storages: plan
            .storages
            .into_iter()
            .filter(|(key, _)| users.contains_key(key))
            .collect(),
        tensors: plan.tensors,
    };

    // First check every storage entry's size against its declaration (nothing is read yet),
    // so the output budget rests on bytes that really are in the file.
    let expected_bytes = |storage: &StorageRef| storage.numel.saturating_mul(storage.dtype.size());
    let size_check = |storage: &StorageRef| {
        let want = expected_bytes(storage) as u64;
        let (key, numel, dtype) = (storage.key.clone(), storage.numel, storage.dtype.name());
        move |size: u64| {
            if size == want {
                Ok(())
            } else {
                Err(format!(
                    "storage `{key}` should hold {numel} elements of {dtype} ({want} bytes) but \
                     has {size} bytes"
                ))
            }
        }
    };
    for (key, storage) in &plan.storages {
        let name = format!("{prefix}/data/{key}");
        if open_entry(&mut archive, &name, file_len, path, size_check(storage))?.is_none() {
            return Err(Error::format(
                path,
                format!("storage `{key}`: the archive has no entry `{name}`"),
            ));
        }
    }
    check_budget(&plan).map_err(|r| Error::format(path, r))?;

    for (key, indices) in &users {
        let Some(storage) = plan.storages.get(key) else {
            continue;
        };
        let name = format!("{prefix}/data/{key}");
        let bytes = read_entry(&mut archive, &name, file_len, path, size_check(storage))?
            .ok_or_else(|| {
                Error::format(
                    path,
                    format!("storage `{key}`: the archive has no entry `{name}`"),
                )
            })?;
        for &i in indices {
            let planned = &plan.tensors[i];
            let tensor = build_tensor(planned, &bytes).map_err(|r| Error::format(path, r))?;
            map.insert(planned.name.clone(), tensor);
        }
    }
    Ok(map)
}
