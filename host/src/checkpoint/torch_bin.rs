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
/// Longest storage key (torch writes small decimal numbers).
const MAX_KEY_BYTES: usize = 256;
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

/// Parses the bytes of a PyTorch zip checkpoint held in memory, exactly as [`read_torch_bin`]
/// reads a file; `path` only labels errors.
///
/// # Errors
///
/// As [`read_torch_bin`], except that there is no file to read.
pub fn parse_torch_bin(path: &Path, bytes: &[u8]) -> Result<TensorMap> {
    read_archive(std::io::Cursor::new(bytes), bytes.len() as u64, path)
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
            Global::StorageClass(d) => format!("the torch storage class of {}", d.name()),
            Global::DType(d) => format!("the torch dtype {}", d.name()),
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

    /// A short description for error messages, with its article (`an int 5`, `a tensor`).
    fn describe(&self) -> String {
        match self {
            Value::None => "None".to_string(),
            Value::Bool(b) => format!("the bool {b}"),
            Value::Int(i) => format!("the int {i}"),
            Value::Float(f) => format!("the float {f}"),
            Value::Str(s) => {
                let short: String = s.chars().take(40).collect();
                if short.len() < s.len() {
                    format!("the string `{short}…`")
                } else {
                    format!("the string `{short}`")
                }
            }
            Value::Bytes(b) => format!("{} bytes", b.len()),
            Value::Tuple(s) => format!("a tuple of {} items", s.items.len()),
            Value::List(s) => format!("a list of {} items", s.items.len()),
            Value::Dict(d) => format!("a dict of {} items", d.pairs.len()),
            Value::Global(g) => g.describe(),
            Value::Storage(s) => format!("the storage `{}`", s.key),
            Value::Tensor(_) => "a tensor".to_string(),
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
            return Err(format!(
                "truncated: needs {n} argument bytes, {rest} remain"
            ));
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
        self.stack
            .pop()
            .ok_or_else(|| "stack underflow".to_string())
    }

    fn top(&self) -> PResult<&Value> {
        if self.stack.len() <= self.base() {
            return Err("stack underflow".to_string());
        }
        self.stack
            .last()
            .ok_or_else(|| "stack underflow".to_string())
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
            Some(other) => Err(format!(
                "expected a list or set, found {}",
                other.describe()
            )),
            None => Err("stack underflow".to_string()),
        }
    }

    /// Adds alternating keys and values to the dict on top of the stack.
    fn extend_dict(&mut self, items: Vec<Value>) -> PResult<()> {
        if !items.len().is_multiple_of(2) {
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
                let index =
                    u32::try_from(self.memo.len()).map_err(|_| "memo is full".to_string())?;
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
                        return Err(format!("cannot BUILD {}", other.describe()));
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

/// A non-negative integer that fits in `usize`; `what` names it in the error.
fn as_index(value: &Value, what: impl FnOnce() -> String) -> PResult<usize> {
    match value {
        Value::Int(i) => usize::try_from(*i)
            .map_err(|_| format!("{} is {i}, not a non-negative integer", what())),
        other => Err(format!(
            "{} is {}, not an integer",
            what(),
            other.describe()
        )),
    }
}

/// A tuple or list of non-negative integers.
fn as_dims(value: &Value, what: &str) -> PResult<Vec<usize>> {
    match value {
        Value::Tuple(s) | Value::List(s) => s
            .items
            .iter()
            .enumerate()
            .map(|(i, v)| as_index(v, || format!("{what}[{i}]")))
            .collect(),
        other => Err(format!("{what} is {}, not a tuple", other.describe())),
    }
}

/// BINPERSID: `('storage', storage type, key, location, numel)` → a storage reference.
fn persistent_load(pid: &Value) -> PResult<StorageRef> {
    let Value::Tuple(t) = pid else {
        return Err(format!("persistent id is {}, not a tuple", pid.describe()));
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
    if key.len() > MAX_KEY_BYTES {
        return Err(format!(
            "persistent id key of {} bytes is longer than {MAX_KEY_BYTES}",
            key.len()
        ));
    }
    let numel = as_index(numel, || "storage size".to_string())?;
    Ok(StorageRef {
        dtype,
        key: key.clone(),
        numel,
    })
}

/// REDUCE: calls one of the allowed globals.
fn reduce(func: &Value, args: &Value) -> PResult<Value> {
    let Value::Global(global) = func else {
        return Err(format!("cannot call {}", func.describe()));
    };
    let Value::Tuple(args) = args else {
        return Err(format!("arguments are {}, not a tuple", args.describe()));
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
            "tensor storage is {}, not a storage",
            args[0].describe()
        ));
    };
    let offset = as_index(&args[1], || "storage offset".to_string())?;
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
            "the pickle holds {}, not a dict of tensors",
            root.describe()
        ));
    };
    let mut entries = Vec::with_capacity(dict.pairs.len());
    for (key, value) in &dict.pairs {
        let Value::Str(name) = key else {
            return Err(format!(
                "a state-dict key is {}, not a string",
                key.describe()
            ));
        };
        let Value::Tensor(tensor) = value else {
            return Err(format!(
                "state-dict entry `{name}` is {}, not a tensor",
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
    let Some((&(run_len, run_stride), outer)) = dims.split_last() else {
        return Err("a non-contiguous view without dimensions".to_string());
    };
    let mut index = vec![0usize; outer.len()];
    // Storage index of the start of the current innermost run; the wrapping arithmetic only
    // ever steps back to values already checked by `check_view`, and `get` guards every read.
    let mut base = t.offset;
    loop {
        if run_stride == 1 {
            let from = base.checked_mul(elem).ok_or_else(out_of_range)?;
            let to = from.checked_add(run_len * elem).ok_or_else(out_of_range)?;
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
    let mut archive =
        ZipArchive::new(reader).map_err(|e| zip_error(path, "not a readable zip archive", e))?;
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
    let entries =
        unpickle_state_dict(&pkl).map_err(|r| Error::format(path, format!("`{pkl_name}`: {r}")))?;
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

#[cfg(test)]
mod tests {
    use std::io::{Cursor, Write};
    use std::path::PathBuf;

    use zip::write::SimpleFileOptions;

    use super::*;

    // --- fixtures ---

    /// The first of `candidates` (relative to this crate) that exists; fails the test, naming
    /// them, when none does.
    fn fixture(candidates: &[&str]) -> PathBuf {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        for candidate in candidates {
            let path = root.join(candidate);
            if path.exists() {
                return path;
            }
        }
        panic!(
            "fixture missing: none of {candidates:?} exists under {}",
            root.display()
        );
    }

    fn tiny_bin() -> PathBuf {
        fixture(&[
            "../tests/fixtures/tiny-bin/pytorch_model.bin",
            "../../shared/fixtures/tiny-bin/pytorch_model.bin",
        ])
    }

    fn tiny_safetensors() -> PathBuf {
        fixture(&[
            "../tests/fixtures/tiny/model.safetensors",
            "../../shared/fixtures/tiny/model.safetensors",
        ])
    }

    /// A raw safetensors tensor: dtype, shape, bytes.
    type RawTensor = (String, Vec<usize>, Vec<u8>);

    /// A minimal safetensors reader: 8-byte little-endian header length, JSON header, data.
    fn read_raw_safetensors(path: &Path) -> BTreeMap<String, RawTensor> {
        let bytes = std::fs::read(path).unwrap();
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
        let data = &bytes[8 + n..];
        let mut out = BTreeMap::new();
        for (name, info) in header.as_object().unwrap() {
            if name == "__metadata__" {
                continue;
            }
            let dtype = info["dtype"].as_str().unwrap().to_string();
            let shape = info["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap() as usize)
                .collect();
            let offsets = info["data_offsets"].as_array().unwrap();
            let (begin, end) = (
                offsets[0].as_u64().unwrap() as usize,
                offsets[1].as_u64().unwrap() as usize,
            );
            out.insert(name.clone(), (dtype, shape, data[begin..end].to_vec()));
        }
        out
    }

    /// Every entry of a zip file, in archive order.
    fn zip_entries(bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
        let mut archive = ZipArchive::new(Cursor::new(bytes)).unwrap();
        (0..archive.len())
            .map(|i| {
                let mut entry = archive.by_index(i).unwrap();
                let name = entry.name().unwrap().to_string();
                let mut data = Vec::new();
                entry.read_to_end(&mut data).unwrap();
                (name, data)
            })
            .collect()
    }

    fn zip_bytes(entries: &[(String, Vec<u8>)]) -> Vec<u8> {
        let mut writer = zip::ZipWriter::new(Cursor::new(Vec::new()));
        let options = SimpleFileOptions::default().compression_method(CompressionMethod::Stored);
        for (name, data) in entries {
            writer.start_file(name.as_str(), options).unwrap();
            writer.write_all(data).unwrap();
        }
        writer.finish().unwrap().into_inner()
    }

    fn load(bytes: &[u8]) -> Result<TensorMap> {
        read_archive(
            Cursor::new(bytes),
            bytes.len() as u64,
            Path::new("test.bin"),
        )
    }

    /// A checkpoint with `pkl` and the given storages under `archive/`.
    fn checkpoint(pkl: &[u8], storages: &[(&str, Vec<u8>)]) -> Vec<u8> {
        let mut entries = vec![
            ("archive/data.pkl".to_string(), pkl.to_vec()),
            ("archive/byteorder".to_string(), b"little".to_vec()),
        ];
        for (key, data) in storages {
            entries.push((format!("archive/data/{key}"), data.clone()));
        }
        zip_bytes(&entries)
    }

    fn message(result: Result<TensorMap>) -> String {
        match result {
            Ok(map) => panic!("expected an error, got {} tensors", map.len()),
            Err(e) => e.to_string(),
        }
    }

    // --- a pickle writer (protocol 2, as torch.save writes it) ---

    #[derive(Default)]
    struct Pkl(Vec<u8>);

    impl Pkl {
        fn proto2() -> Self {
            Pkl(vec![0x80, 2])
        }
        fn op(&mut self, op: u8) -> &mut Self {
            self.0.push(op);
            self
        }
        fn str(&mut self, s: &str) -> &mut Self {
            self.0.push(b'X');
            self.0.extend((s.len() as u32).to_le_bytes());
            self.0.extend(s.as_bytes());
            self
        }
        fn int(&mut self, v: i64) -> &mut Self {
            match i32::try_from(v) {
                Ok(v) => {
                    self.0.push(b'J');
                    self.0.extend(v.to_le_bytes());
                }
                Err(_) => {
                    self.0.extend([0x8a, 8]);
                    self.0.extend(v.to_le_bytes());
                }
            }
            self
        }
        fn global(&mut self, module: &str, name: &str) -> &mut Self {
            self.0.push(b'c');
            self.0.extend(format!("{module}\n{name}\n").as_bytes());
            self
        }
        fn ints(&mut self, values: &[i64]) -> &mut Self {
            self.op(b'(');
            for &v in values {
                self.int(v);
            }
            self.op(b't')
        }
        /// `name: _rebuild_tensor_v2(('storage', torch.<class>, key, 'cpu', numel), …)`.
        #[allow(clippy::too_many_arguments)]
        fn tensor(
            &mut self,
            name: &str,
            class: &str,
            key: &str,
            numel: i64,
            offset: i64,
            size: &[i64],
            stride: &[i64],
        ) -> &mut Self {
            self.str(name)
                .global("torch._utils", "_rebuild_tensor_v2")
                .op(b'(')
                .op(b'(')
                .str("storage")
                .global("torch", class)
                .str(key)
                .str("cpu")
                .int(numel)
                .op(b't')
                .op(b'Q')
                .int(offset)
                .ints(size)
                .ints(stride)
                .op(0x89)
                .global("collections", "OrderedDict")
                .op(b')')
                .op(b'R')
                .op(b't')
                .op(b'R')
        }
        /// A plain dict of whatever `body` pushes (key/value pairs), then STOP.
        fn state_dict(body: impl FnOnce(&mut Pkl)) -> Vec<u8> {
            let mut p = Pkl::proto2();
            p.op(b'}').op(b'(');
            body(&mut p);
            p.op(b'u').op(b'.');
            p.0
        }
    }

    fn f32_bytes(values: impl IntoIterator<Item = f32>) -> Vec<u8> {
        values.into_iter().flat_map(f32::to_le_bytes).collect()
    }

    // --- the fixture ---

    #[test]
    fn fixture_matches_safetensors_bit_for_bit() {
        let bin = read_torch_bin(&tiny_bin()).unwrap();
        let reference = read_raw_safetensors(&tiny_safetensors());
        assert!(!reference.is_empty());
        for (name, (dtype, shape, bytes)) in &reference {
            let tensor = bin
                .get(name)
                .unwrap_or_else(|| panic!("`{name}` missing from pytorch_model.bin"));
            assert_eq!(dtype, "F32", "{name}");
            assert_eq!(tensor.stored_as, "F32", "{name}");
            assert_eq!(&tensor.shape, shape, "{name}");
            let values = tensor.as_float().unwrap();
            let expected: Vec<u32> = bytes
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
                .collect();
            let found: Vec<u32> = values.iter().map(|v| v.to_bits()).collect();
            assert!(found == expected, "`{name}` differs");
        }
        let extra: Vec<&String> = bin.keys().filter(|k| !reference.contains_key(*k)).collect();
        assert!(
            extra.is_empty(),
            "tensors not in the safetensors file: {extra:?}"
        );
    }

    #[test]
    fn reads_through_read_tensor_file() {
        let map = super::super::read_tensor_file(&tiny_bin()).unwrap();
        assert!(!map.is_empty());
    }

    // --- hand-built pickles ---

    #[test]
    fn non_contiguous_views_of_one_storage() {
        let pkl = Pkl::state_dict(|p| {
            // The storage holds 0..12, a 3x4 matrix row-major.
            p.tensor("transposed", "FloatStorage", "0", 12, 0, &[4, 3], &[1, 4]);
            p.tensor("window", "FloatStorage", "0", 12, 5, &[2, 2], &[4, 1]);
            p.tensor("columns", "FloatStorage", "0", 12, 1, &[3, 2], &[4, 2]);
            p.tensor("expanded", "FloatStorage", "0", 12, 2, &[3, 2], &[0, 1]);
            p.tensor("scalar", "FloatStorage", "0", 12, 7, &[], &[]);
            p.tensor("empty", "FloatStorage", "0", 12, 0, &[0, 3], &[3, 1]);
            p.tensor(
                "whole",
                "FloatStorage",
                "0",
                12,
                0,
                &[1, 3, 1, 4],
                &[99, 4, 7, 1],
            );
        });
        let file = checkpoint(&pkl, &[("0", f32_bytes((0..12).map(|i| i as f32)))]);
        let map = load(&file).unwrap();
        let get = |name: &str| {
            let t = &map[name];
            assert_eq!(t.stored_as, "F32");
            (t.shape.clone(), t.as_float().unwrap().to_vec())
        };
        assert_eq!(
            get("transposed"),
            (
                vec![4, 3],
                vec![0., 4., 8., 1., 5., 9., 2., 6., 10., 3., 7., 11.]
            )
        );
        assert_eq!(get("window"), (vec![2, 2], vec![5., 6., 9., 10.]));
        assert_eq!(get("columns"), (vec![3, 2], vec![1., 3., 5., 7., 9., 11.]));
        assert_eq!(get("expanded"), (vec![3, 2], vec![2., 3., 2., 3., 2., 3.]));
        assert_eq!(get("scalar"), (vec![], vec![7.]));
        assert_eq!(get("empty"), (vec![0, 3], vec![]));
        assert_eq!(
            get("whole"),
            (vec![1, 3, 1, 4], (0..12).map(|i| i as f32).collect())
        );
    }

    #[test]
    fn half_bf16_double_and_integer_storages() {
        let f16: Vec<u8> = vec![0x00, 0x3c, 0x00, 0xc0, 0x00, 0x38]; // 1, -2, 0.5
        let bf16: Vec<u8> = vec![0x80, 0x3f, 0x40, 0x40]; // 1, 3
        let f64s: Vec<u8> = [1.25f64, -3.5]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let longs: Vec<u8> = [i64::MIN, 7].iter().flat_map(|v| v.to_le_bytes()).collect();
        let ints: Vec<u8> = [-5i32, 6].iter().flat_map(|v| v.to_le_bytes()).collect();
        let shorts: Vec<u8> = [-300i16, 2].iter().flat_map(|v| v.to_le_bytes()).collect();
        let pkl = Pkl::state_dict(|p| {
            p.tensor("h", "HalfStorage", "h", 3, 0, &[3], &[1]);
            p.tensor("h_rev", "HalfStorage", "h", 3, 1, &[2], &[1]);
            p.tensor("b", "BFloat16Storage", "b", 2, 0, &[2], &[1]);
            p.tensor("d", "DoubleStorage", "d", 2, 0, &[2], &[1]);
            p.tensor("l", "LongStorage", "l", 2, 0, &[2], &[1]);
            p.tensor("i", "IntStorage", "i", 2, 0, &[2], &[1]);
            p.tensor("s", "ShortStorage", "s", 2, 0, &[2], &[1]);
            p.tensor("c", "CharStorage", "c", 2, 0, &[2], &[1]);
            p.tensor("u", "ByteStorage", "u", 2, 0, &[2], &[1]);
            p.tensor("m", "BoolStorage", "m", 3, 0, &[3], &[1]);
        });
        let file = checkpoint(
            &pkl,
            &[
                ("h", f16),
                ("b", bf16),
                ("d", f64s),
                ("l", longs),
                ("i", ints),
                ("s", shorts),
                ("c", vec![0xff, 0x05]),
                ("u", vec![0xff, 0x05]),
                ("m", vec![1, 0, 1]),
            ],
        );
        let map = load(&file).unwrap();
        let float = |name: &str, stored: &str, values: &[f32]| {
            assert_eq!(map[name].stored_as, stored, "{name}");
            assert_eq!(map[name].as_float().unwrap(), values, "{name}");
        };
        float("h", "F16", &[1.0, -2.0, 0.5]);
        float("h_rev", "F16", &[-2.0, 0.5]);
        float("b", "BF16", &[1.0, 3.0]);
        float("d", "F64", &[1.25, -3.5]);
        let int = |name: &str, stored: &str, values: &[i64]| {
            assert_eq!(map[name].stored_as, stored, "{name}");
            assert_eq!(map[name].as_int().unwrap(), values, "{name}");
        };
        int("l", "I64", &[i64::MIN, 7]);
        int("i", "I32", &[-5, 6]);
        int("s", "I16", &[-300, 2]);
        int("c", "I8", &[-1, 5]);
        int("u", "U8", &[255, 5]);
        int("m", "BOOL", &[1, 0, 1]);
    }

    /// Protocol 4 opcodes, an OrderedDict with `_metadata` set by BUILD, a parameter, a
    /// dtype-typed storage, numel as LONG1 and memo reuse.
    #[test]
    fn protocol_4_ordered_dict_and_parameter() {
        let mut p = Pkl(vec![0x80, 4, 0x95]);
        p.0.extend(0u64.to_le_bytes()); // frame length is patched below
        let sbu = |p: &mut Pkl, s: &str| {
            p.0.push(0x8c);
            p.0.push(s.len() as u8);
            p.0.extend(s.as_bytes());
            p.op(0x94);
        };
        sbu(&mut p, "collections");
        sbu(&mut p, "OrderedDict");
        p.op(0x93).op(0x94); // memo 2: OrderedDict
        p.op(b')').op(b'R').op(0x94).op(b'(');
        sbu(&mut p, "weight");
        sbu(&mut p, "torch._utils");
        sbu(&mut p, "_rebuild_parameter");
        p.op(0x93).op(b'(');
        sbu(&mut p, "torch._utils");
        sbu(&mut p, "_rebuild_tensor_v2");
        p.op(0x93).op(b'(').op(b'(');
        sbu(&mut p, "storage");
        sbu(&mut p, "torch");
        sbu(&mut p, "float16");
        p.op(0x93);
        sbu(&mut p, "0");
        sbu(&mut p, "cuda:0");
        p.0.extend([0x8a, 1, 4]); // LONG1 4
        p.op(b't').op(b'Q');
        p.op(b'K').0.push(0);
        p.op(b'K').0.push(2);
        p.op(b'K').0.push(2);
        p.op(0x86);
        p.op(b'K').0.push(2);
        p.op(b'K').0.push(1);
        p.op(0x86).op(0x89);
        p.op(b'h').0.push(2);
        p.op(b')').op(b'R').op(b't').op(b'R'); // the tensor
        p.op(0x88); // requires_grad
        p.op(b'h').0.push(2);
        p.op(b')').op(b'R').op(b't').op(b'R'); // the parameter
        p.op(b'u');
        // BUILD with {'_metadata': OrderedDict({'': {'version': 1}})}.
        p.op(b'}');
        sbu(&mut p, "_metadata");
        p.op(b'h').0.push(2);
        p.op(b')').op(b'R').op(b'(');
        sbu(&mut p, "");
        p.op(b'}');
        sbu(&mut p, "version");
        p.op(b'K').0.push(1);
        p.op(b's').op(b'u').op(b's').op(b'b').op(b'.');
        let frame_len = (p.0.len() - 11) as u64;
        p.0[3..11].copy_from_slice(&frame_len.to_le_bytes());
        let half = vec![0x00, 0x3c, 0x00, 0xc0, 0x00, 0x38, 0x00, 0x00];
        let file = checkpoint(&p.0, &[("0", half)]);
        let map = load(&file).unwrap();
        assert_eq!(map.len(), 1);
        assert_eq!(map["weight"].shape, vec![2, 2]);
        assert_eq!(map["weight"].stored_as, "F16");
        assert_eq!(map["weight"].as_float().unwrap(), &[1.0, -2.0, 0.5, 0.0]);
    }

    #[test]
    fn rejects_unknown_globals() {
        let mut p = Pkl::proto2();
        p.global("os", "system")
            .str("echo hi")
            .op(0x85)
            .op(b'R')
            .op(b'.');
        let err = message(load(&checkpoint(&p.0, &[])));
        assert!(
            err.contains("os.system") && err.contains("not allowed"),
            "{err}"
        );

        let mut p = Pkl::proto2();
        p.op(0x8c).0.push(8);
        p.0.extend(b"builtins");
        p.op(0x8c).0.push(4);
        p.0.extend(b"eval");
        p.op(0x93).op(b'.');
        let err = unpickle_state_dict(&p.0).unwrap_err();
        assert!(err.contains("builtins.eval"), "{err}");

        let mut p = Pkl::proto2();
        p.global("torch", "load").op(b'.');
        assert!(
            unpickle_state_dict(&p.0)
                .unwrap_err()
                .contains("torch.load")
        );
    }

    #[test]
    fn unsupported_opcode_names_opcode_and_offset() {
        let err = unpickle_state_dict(&[0x80, 2, b'N', 0x81, b'.']).unwrap_err();
        assert!(
            err.contains("0x81") && err.contains("NEWOBJ") && err.contains("at byte 3"),
            "{err}"
        );
        let err = unpickle_state_dict(&[0x80, 2, 0xff]).unwrap_err();
        assert!(err.contains("0xff") && err.contains("at byte 2"), "{err}");
    }

    #[test]
    fn rejects_views_outside_their_storage() {
        let pkl = Pkl::state_dict(|p| {
            p.tensor("x", "FloatStorage", "3", 10, 0, &[4, 4], &[4, 1]);
        });
        let err = message(load(&checkpoint(&pkl, &[("3", vec![0; 40])])));
        assert!(
            err.contains("tensor `x`")
                && err.contains("storage `3` holds 10 elements")
                && err.contains("needs 16"),
            "{err}"
        );
        // Overflowing stride arithmetic.
        let pkl = Pkl::state_dict(|p| {
            p.tensor("x", "FloatStorage", "0", 4, 1, &[3], &[i64::MAX]);
        });
        let err = message(load(&checkpoint(&pkl, &[("0", vec![0; 16])])));
        assert!(err.contains("overflows"), "{err}");
        // A stride-0 view of 2^40 elements of a one-element storage.
        let pkl = Pkl::state_dict(|p| {
            p.tensor("x", "FloatStorage", "0", 1, 0, &[1 << 20, 1 << 20], &[0, 0]);
        });
        let err = message(load(&checkpoint(&pkl, &[("0", vec![0; 4])])));
        assert!(err.contains("expanded view"), "{err}");
        // Negative sizes.
        let pkl = Pkl::state_dict(|p| {
            p.tensor("x", "FloatStorage", "0", 4, 0, &[-1], &[1]);
        });
        assert!(message(load(&checkpoint(&pkl, &[("0", vec![0; 16])]))).contains("size[0]"));
    }

    #[test]
    fn rejects_storage_entries_of_the_wrong_size_or_missing() {
        // numel 2^62: the declared size cannot match the entry (and nothing is allocated).
        let pkl = Pkl::state_dict(|p| {
            p.tensor("x", "FloatStorage", "0", 1 << 62, 0, &[2], &[1]);
        });
        let err = message(load(&checkpoint(&pkl, &[("0", vec![0; 8])])));
        assert!(
            err.contains("too large") || err.contains("should hold"),
            "{err}"
        );
        let pkl = Pkl::state_dict(|p| {
            p.tensor("x", "FloatStorage", "0", 1 << 40, 0, &[2], &[1]);
        });
        let err = message(load(&checkpoint(&pkl, &[("0", vec![0; 8])])));
        assert!(err.contains("should hold 1099511627776 elements"), "{err}");
        let pkl = Pkl::state_dict(|p| {
            p.tensor("x", "FloatStorage", "0", 2, 0, &[2], &[1]);
        });
        let err = message(load(&checkpoint(&pkl, &[("0", vec![0; 7])])));
        assert!(err.contains("has 7 bytes"), "{err}");
        let err = message(load(&checkpoint(&pkl, &[])));
        assert!(err.contains("no entry `archive/data/0`"), "{err}");
        // One key declared with two dtypes.
        let pkl = Pkl::state_dict(|p| {
            p.tensor("x", "FloatStorage", "0", 2, 0, &[2], &[1]);
            p.tensor("y", "HalfStorage", "0", 4, 0, &[2], &[1]);
        });
        let err = message(load(&checkpoint(&pkl, &[("0", vec![0; 8])])));
        assert!(err.contains("elsewhere"), "{err}");
    }

    #[test]
    fn rejects_big_endian_and_non_checkpoints() {
        let pkl = Pkl::state_dict(|_| {});
        let file = zip_bytes(&[
            ("archive/data.pkl".to_string(), pkl.clone()),
            ("archive/byteorder".to_string(), b"big".to_vec()),
        ]);
        let err = message(load(&file));
        assert!(err.contains("big-endian"), "{err}");
        // No byteorder entry: little-endian.
        let file = zip_bytes(&[("archive/data.pkl".to_string(), pkl)]);
        assert!(load(&file).unwrap().is_empty());
        let file = zip_bytes(&[("other.txt".to_string(), b"hi".to_vec())]);
        assert!(message(load(&file)).contains("data.pkl"));
        assert!(message(load(b"not a zip at all")).contains("zip"));
        let missing = read_torch_bin(Path::new("/nonexistent/pytorch_model.bin"));
        assert!(matches!(missing, Err(Error::Io { .. })));
    }

    #[test]
    fn rejects_malformed_pickles() {
        let cases: &[(&str, &[u8])] = &[
            ("empty", b""),
            ("stop on empty stack", b"\x80\x02."),
            ("memo index never stored", b"\x80\x02h\x05."),
            ("long memo index", b"\x80\x02j\xff\xff\xff\xff."),
            ("append to nothing", b"\x80\x02Na."),
            ("pop without mark", b"\x80\x021."),
            ("tuple without mark", b"\x80\x02Nt."),
            ("setitems on a list", b"\x80\x02](NNu."),
            ("odd dict", b"\x80\x02}(Nu."),
            ("protocol 9", b"\x80\x09}."),
            ("not a dict", b"\x80\x02N."),
            ("dict of ints", b"\x80\x02}(K\x01K\x02u."),
            ("huge unicode", b"\x80\x02X\xff\xff\xff\xff."),
            (
                "huge unicode8",
                b"\x80\x02\x8d\xff\xff\xff\xff\xff\xff\xff\xff.",
            ),
            (
                "huge frame",
                b"\x80\x04\x95\xff\xff\xff\xff\xff\xff\xff\x7f}.",
            ),
            ("bad utf-8", b"\x80\x02X\x01\x00\x00\x00\xff."),
            (
                "long1 too big",
                b"\x80\x02\x8a\x09\x00\x00\x00\x00\x00\x00\x00\x00\x01.",
            ),
            ("negative long4", b"\x80\x02\x8b\xff\xff\xff\xff."),
            ("global without newline", b"\x80\x02ctorch"),
            ("reduce a string", b"\x80\x02X\x00\x00\x00\x00)R."),
            ("persid of None", b"\x80\x02NQ."),
            ("build an int", b"\x80\x02K\x01}b."),
        ];
        for (what, bytes) in cases {
            assert!(unpickle_state_dict(bytes).is_err(), "{what} was accepted");
        }
        // Values nested past the depth limit.
        let mut deep = vec![0x80, 2, b')'];
        deep.extend(std::iter::repeat_n(0x85u8, 10_000));
        deep.push(b'.');
        assert!(unpickle_state_dict(&deep).unwrap_err().contains("nested"));
        // A list appended into itself through the memo, over and over.
        let mut selfref = vec![0x80, 2, b']', b'q', 0];
        for _ in 0..10_000 {
            selfref.extend([b'h', 0, b'a', b'q', 0]);
        }
        selfref.push(b'.');
        assert!(unpickle_state_dict(&selfref).is_err());
        // Too many MARKs.
        let mut marks = vec![0x80, 2];
        marks.extend(std::iter::repeat_n(b'(', MAX_MARKS + 1));
        assert!(unpickle_state_dict(&marks).unwrap_err().contains("MARK"));
        // A shared list copied many times: bounded work.
        let mut copies = vec![0x80, 2, b']', b'q', 0, b'('];
        copies.extend(std::iter::repeat_n(b'N', 100_000));
        copies.extend([b'e', b'q', 0]);
        for _ in 0..1_000 {
            copies.extend([b'h', 0, b'N', b'a', b'0']);
        }
        copies.extend([b'}', b'.']);
        assert!(unpickle_state_dict(&copies).unwrap_err().contains("copied"));
    }

    // --- robustness on the fixture ---

    fn fixture_entries() -> Vec<(String, Vec<u8>)> {
        zip_entries(&std::fs::read(tiny_bin()).unwrap())
    }

    fn pkl_of(entries: &[(String, Vec<u8>)]) -> (usize, Vec<u8>) {
        entries
            .iter()
            .enumerate()
            .find(|(_, (name, _))| name.ends_with("/data.pkl"))
            .map(|(i, (_, data))| (i, data.clone()))
            .unwrap()
    }

    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    #[test]
    fn every_truncation_of_the_pickle_is_an_error() {
        let (_, pkl) = pkl_of(&fixture_entries());
        assert!(unpickle_state_dict(&pkl).is_ok());
        for n in 0..pkl.len() {
            assert!(
                unpickle_state_dict(&pkl[..n]).is_err(),
                "truncation at {n} was accepted"
            );
        }
    }

    #[test]
    fn truncated_files_are_errors() {
        let file = std::fs::read(tiny_bin()).unwrap();
        for n in (0..file.len())
            .step_by(97)
            .chain(file.len() - 30..file.len())
        {
            assert!(load(&file[..n]).is_err(), "truncation at {n} was accepted");
        }
    }

    #[test]
    fn bit_flips_in_the_pickle_never_panic() {
        let entries = fixture_entries();
        let (index, pkl) = pkl_of(&entries);
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        let (mut ok, mut err) = (0, 0);
        for round in 0..3000 {
            let mut mutated = pkl.clone();
            for _ in 0..1 + rng.below(3) {
                let at = rng.below(mutated.len());
                if round % 4 == 0 {
                    mutated[at] = rng.next() as u8;
                } else {
                    mutated[at] ^= 1 << rng.below(8);
                }
            }
            // The pickle alone, and the whole checkpoint around it.
            let _ = unpickle_state_dict(&mutated);
            let mut changed = entries.clone();
            changed[index].1 = mutated;
            match load(&zip_bytes(&changed)) {
                Ok(_) => ok += 1,
                Err(_) => err += 1,
            }
        }
        assert!(err > 0 && ok + err == 3000);
    }

    #[test]
    fn bit_flips_in_the_file_never_panic() {
        let file = std::fs::read(tiny_bin()).unwrap();
        let mut rng = XorShift(0x2545_f491_4f6c_dd1d);
        for round in 0..3000 {
            let mut mutated = file.clone();
            // Half the flips land in the headers at both ends, where they matter most.
            let at = match round % 3 {
                0 => rng.below(mutated.len()),
                1 => rng.below(6000),
                _ => mutated.len() - 1 - rng.below(5000),
            };
            mutated[at] ^= 1 << rng.below(8);
            let _ = load(&mutated);
        }
    }
}
